"""Hermetic offline wandb for tests: every wandb directory in a temp dir, no key, no network.

Importable from test files and from the processes ``run_ranks`` spawns (this folder is on the
path of both).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def wandb_env(root: str | os.PathLike[str]) -> dict[str, str]:
    """Environment variables that keep everything wandb writes under ``root``."""
    root = Path(root)
    env = {
        "WANDB_DIR": str(root / "wandb_dir"),
        "WANDB_CACHE_DIR": str(root / "wandb_cache"),
        "WANDB_DATA_DIR": str(root / "wandb_data"),
        "WANDB_CONFIG_DIR": str(root / "wandb_config"),
        "WANDB_ARTIFACT_DIR": str(root / "wandb_artifacts"),
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_MODE": "offline",
    }
    for key, value in env.items():
        if key.endswith("_DIR"):
            Path(value).mkdir(parents=True, exist_ok=True)
    return env


def apply_wandb_env(monkeypatch, root: str | os.PathLike[str]) -> dict[str, str]:
    """Set :func:`wandb_env` with pytest's monkeypatch (undone after the test).

    wandb reads its environment once per process (its setup singleton), so the singleton is
    torn down here and must be again when the test ends (see :func:`reset_wandb`).
    """
    env = wandb_env(root)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    reset_wandb()
    return env


def reset_wandb() -> None:
    """Forget wandb's process-wide settings so the next ``wandb.init`` reads the environment."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()


def run_torchrun(
    script: str | os.PathLike[str],
    args: list[str],
    env: dict[str, str],
    *,
    nproc: int = 2,
    max_restarts: int = 0,
    timeout: float = 240.0,
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone`` a script; on timeout, kill the whole process tree and fail.

    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: with the rendezvous store shared with the workers
    (torch's default since 2.5), a restarted attempt can read the previous attempt's addresses
    and its gloo group fails to connect or hangs (pytorch/pytorch#135712).
    """
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={max_restarts}",
        str(script),
        *args,
    ]
    env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **env}
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"torchrun {script} did not finish within {timeout:.0f}s:\n{err[-4000:]}"
        ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
