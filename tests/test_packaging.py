"""Packaging: ``python -m build`` makes a wheel and an sdist that ``twine check --strict``
accepts, and the wheel, installed into a fresh virtual environment with an extra, imports and
works from there (not from this checkout).

The fresh environment gets no packages of its own (``--no-deps``): a ``.pth`` file points it at
this interpreter's site-packages for torch, numpy and mlflow, so nothing is downloaded. Only
paths are added that way, never the checkout's editable install (a ``.pth`` line adds a
directory; it does not run that directory's own ``.pth`` files)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("build")
pytest.importorskip("twine")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_and_sdist_build_check_and_install_with_an_extra(tmp_path):
    dist = tmp_path / "dist"
    # --no-isolation: build with this environment's setuptools, offline
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp_path)
    [wheel] = dist.glob("distlog-*-py3-none-any.whl")
    [sdist] = dist.glob("distlog-*.tar.gz")
    checked = run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    assert checked.stdout.count("PASSED") == 2

    # nothing from this checkout: PYTHONPATH=src (and its distlog.egg-info) would stand in for
    # the wheel, and pip would take it for an installed distlog
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        f"{wheel}[mlflow]", env=env)  # fmt: skip
    # after the install, so that pip never sees (or touches) the parent's own distlog
    (site / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    probe = textwrap.dedent(
        """
        import sys
        from importlib import metadata
        from pathlib import Path
        import distlog
        assert Path(distlog.__file__).is_relative_to(sys.prefix), distlog.__file__
        assert (Path(distlog.__file__).parent / "py.typed").is_file()
        requires = metadata.requires("distlog")
        assert any(r.startswith("mlflow") and 'extra == "mlflow"' in r for r in requires)
        sink = distlog.MlflowSink(tracking_uri="sqlite:///" + sys.argv[1] + "/m.db", experiment="w")
        logger = distlog.Logger(run_dir=sys.argv[1] + "/run", sinks=[sink])
        logger.log_scalar("x", 2.0)
        logger.flush(1)
        logger.finish()
        print("OK", distlog.__version__, sink.run_id)
        """
    )
    done = run(python, "-c", probe, tmp_path, cwd=tmp_path, env=env)
    assert done.stdout.startswith("OK 0.1.0 ")
    shown = run(venv / "bin" / "distlog", "show", tmp_path / "run", env=env)  # console script
    assert "x" in shown.stdout and "rows: 1" in shown.stdout
