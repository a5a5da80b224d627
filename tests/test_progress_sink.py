"""ProgressSink: draws on terminals, stays silent elsewhere."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap

import pytest
from dist_harness import subprocess_env

from distlog.sinks.base import Sink
from distlog.sinks.progress import ProgressSink

rich_console = pytest.importorskip("rich.console")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal_console(file: io.StringIO) -> object:
    return rich_console.Console(file=file, force_terminal=True, width=160, color_system=None)


def sized_pty(columns: int = 150) -> tuple[int, int]:
    """A pseudo-terminal with a window size, like a real terminal has."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    return master, slave


def plain(text: str) -> str:
    return ANSI.sub("", text)


def test_is_a_sink():
    assert isinstance(ProgressSink(enabled=False), Sink)


def test_rich_bar_shows_step_total_and_latest_values(monkeypatch):
    monkeypatch.delenv("DISTLOG_PROGRESS", raising=False)
    out = io.StringIO()
    sink = ProgressSink(total=100, console=terminal_console(out))
    assert sink.enabled and sink.backend == "rich"
    sink.log_scalars(10, {"train/loss": 0.75, "lr": 3e-4})
    sink.log_scalars(40, {"train/loss": 0.4312, "lr": 1e-4})
    sink.close()
    sink.close()
    text = plain(out.getvalue())
    final = text.rstrip().splitlines()[-1]
    assert "40/100" in final and "train/loss 0.4312" in final and "lr 0.0001" in final
    assert "0.75" not in final


def test_keys_select_and_order_what_is_shown(monkeypatch):
    monkeypatch.delenv("DISTLOG_PROGRESS", raising=False)
    out = io.StringIO()
    sink = ProgressSink(keys=["val/*", "train/loss"], console=terminal_console(out))
    row = {"train/loss": 1.5, "train/acc": 0.5, "val/f1": 0.25, "val/acc": 0.125}
    assert sink.shown_values(row) == [("val/acc", 0.125), ("val/f1", 0.25), ("train/loss", 1.5)]
    sink.log_scalars(3, row)
    sink.close()
    final = plain(out.getvalue()).rstrip().splitlines()[-1]
    assert "val/acc 0.125 · val/f1 0.25 · train/loss 1.5" in final and "train/acc" not in final


def test_off_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("DISTLOG_PROGRESS", raising=False)
    out = io.StringIO()
    sink = ProgressSink(total=10, console=rich_console.Console(file=out))
    assert not sink.enabled
    sink.log_scalars(1, {"a": 1.0})
    sink.close()
    assert out.getvalue() == ""
    tqdm_out = io.StringIO()
    sink = ProgressSink(total=10, backend="tqdm", stream=tqdm_out)
    assert not sink.enabled
    sink.log_scalars(1, {"a": 1.0})
    sink.close()
    assert tqdm_out.getvalue() == ""


@pytest.mark.parametrize("value", ["0", "false", "OFF"])
def test_env_turns_it_off_even_when_forced(monkeypatch, value):
    monkeypatch.setenv("DISTLOG_PROGRESS", value)
    out = io.StringIO()
    sink = ProgressSink(total=10, enabled=True, console=terminal_console(out))
    assert not sink.enabled
    sink.log_scalars(5, {"a": 1.0})
    sink.close()
    assert out.getvalue() == ""


def test_argument_turns_it_off_and_other_ranks_stay_silent(monkeypatch):
    monkeypatch.delenv("DISTLOG_PROGRESS", raising=False)
    assert not ProgressSink(enabled=False, console=terminal_console(io.StringIO())).enabled
    monkeypatch.setenv("RANK", "3")
    assert not ProgressSink(console=terminal_console(io.StringIO())).enabled
    monkeypatch.setenv("RANK", "0")
    assert ProgressSink(console=terminal_console(io.StringIO())).enabled


def test_forced_on_without_a_terminal(monkeypatch):
    monkeypatch.delenv("DISTLOG_PROGRESS", raising=False)
    out = io.StringIO()
    sink = ProgressSink(total=8, enabled=True, stream=out)
    sink.log_scalars(8, {"loss": 2.0})
    sink.close()
    assert "8/8" in plain(out.getvalue()) and "loss 2" in plain(out.getvalue())


def test_tqdm_backend_on_a_pseudo_terminal(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.delenv("DISTLOG_PROGRESS", raising=False)
    master, slave = sized_pty()
    stream = os.fdopen(slave, "w")
    try:
        sink = ProgressSink(total=50, backend="tqdm", stream=stream)
        assert sink.enabled
        sink.log_scalars(25, {"train/loss": 0.5})
        sink.close()
        stream.flush()
        text = plain(_read_all(master)).replace("\r", "\n")
    finally:
        stream.close()
        os.close(master)
    assert "25/50" in text and "train/loss 0.5" in text


def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


SCRIPT = textwrap.dedent(
    """
    from distlog.sinks.progress import ProgressSink
    sink = ProgressSink(total=20)
    print("enabled", sink.enabled, flush=True)
    for step in range(0, 21, 5):
        sink.log_scalars(step, {"train/loss": 1.0 / (step + 1)})
    sink.close()
    """
)


@pytest.mark.slow  # starts a process
def test_a_script_draws_on_a_terminal_and_not_into_a_pipe():
    env = subprocess_env(TERM="xterm", COLUMNS="150")
    env.pop("DISTLOG_PROGRESS", None)
    env.pop("RANK", None)
    piped = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "enabled False\n"

    master, slave = sized_pty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], env=env, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    text = plain(b"".join(chunks).decode("utf-8", "replace"))
    assert proc.returncode == 0, text
    assert "enabled True" in text and "20/20" in text and "train/loss 0.04762" in text
