"""The package stays typed and lint-clean: mypy on src (the package ships py.typed) and ruff."""

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
def test_ruff_finds_nothing():
    proc = subprocess.run(
        [_tool("ruff"), "check", "src", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
