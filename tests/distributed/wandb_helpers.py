"""Hermetic offline wandb for tests: every wandb directory in a temp dir, no key, no network.

Importable from test files and from the processes ``run_ranks`` spawns (this folder is on the
path of both).
"""

from __future__ import annotations

import os
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
