"""The package stays typed and lint-clean: mypy on src (the package ships py.typed) and on the
scripts, and ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it comes with the dev extra)")
    return found


@pytest.mark.slow  # starts a process
def test_mypy_finds_no_type_errors_in_the_package():
    proc = subprocess.run(
        [_tool("mypy"), "src/distlog"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.slow  # starts a process
def test_mypy_finds_no_type_errors_in_the_scripts():
    # bench_gil.py imports bench.py, which mypy then checks as the module ``bench``: naming
    # bench.py too would make it one file under two module names.
    scripts = ["scripts/bench_gil.py", "scripts/bench_frameworks.py", "scripts/gpu_check.py"]
    proc = subprocess.run(
        [_tool("mypy"), *scripts], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "in 3 source files" in proc.stdout


@pytest.mark.slow  # starts a process
def test_ruff_finds_nothing():
    proc = subprocess.run(
        [_tool("ruff"), "check", "src", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
