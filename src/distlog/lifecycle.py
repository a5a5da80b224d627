"""How a job's end reaches the logger: signals, uncaught exceptions and interpreter exit.

A training job rarely ends by calling ``finish()``: SLURM preempts it with SIGTERM, a user presses
Ctrl-C, a rank raises, a script calls ``sys.exit``. Whatever the way, the writer must put every
row that already reached it into every sink and close them (so wandb records a failed run
instead of losing its last rows). This module turns each of those endings into one call,
[Logger.close_locally(exit_code)][distlog.Logger.close_locally], which never communicates with
another rank: when a job is ending, the other ranks may be gone, in another collective, or
ending too. It knows loggers only through the small [Closable][distlog.lifecycle.Closable]
protocol, so it does not import the logger module.

- **Signals** (SIGTERM, SIGINT by default; only on the writer, only from the main thread):
  the handler finishes every open logger with exit code ``128 + signum`` and then does what
  would have happened without distlog: it calls the previous Python handler (SIGINT's raises
  ``KeyboardInterrupt``), or restores the default action and re-raises the signal so the process
  dies with the conventional status. A second signal while the first is handled is not delayed.
- **Uncaught exceptions**: recorded (``sys.excepthook`` and ``sys.last_value``, so a replaced
  hook does not hide them); the at-exit finish then uses exit code 1 (130 for
  ``KeyboardInterrupt``).
- **Interpreter exit** (``atexit``): loggers still open are finished without a collective. An
  open logger is held here until it is finished, like an open file: one made in a function that
  returned without ``finish()`` (a ``main()``, a ``torch.multiprocessing.spawn`` worker) is
  finished at exit instead of being collected with its queued rows.
- **Forked children** (``DataLoader`` workers, ``multiprocessing`` helpers started by fork)
  inherit copies of the open loggers, of distlog's signal handlers and of its exit hooks. None
  of it is theirs: in the child every open logger is disowned (each later call raises a
  [LoggerClosedError][distlog.errors.LoggerClosedError] that says why) and the handlers and
  hooks are put back as they were, so a worker that SLURM or the ``DataLoader`` terminates dies
  of the signal at once, and no child writes a row again or marks the parent's run ended.

Importing distlog changes no global state: the exception hook and the exit handler are installed
when the first logger registers and removed (the previous hook restored) when the last one is
finished; the fork hook is registered then too, and does nothing while no logger is open.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import warnings
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = [
    "DEFAULT_SIGNALS",
    "SIGNAL_FINISH_SECONDS",
    "Closable",
    "default_signals",
    "exit_code_for_signal",
    "exit_code_of",
]


class Closable(Protocol):
    """What this module needs of a logger: two ways to close it without any collective."""

    def close_locally(self, exit_code: int, *, timeout: float | None = None) -> None:
        """Write what reached this rank and close the sinks with ``exit_code``."""

    def finish_at_exit(self, exit_code: int) -> None:
        """Close at interpreter exit (a world of one may still write its tail)."""

    def disown(self) -> None:
        """In a forked child: refuse every later call, write and close nothing."""


DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
SIGNAL_FINISH_SECONDS = 20.0
"""How long a signal handler waits for the sinks to write and close before letting the process
die anyway. SLURM sends SIGKILL 30 s (``KillWait``) after SIGTERM, torchrun 30 s after its own."""

# Open loggers, held strongly: an open logger is a resource like an open file. Held weakly, a
# logger made in a function that returned without finish() (a DDP tutorial's worker, a main())
# was collected at once, and interpreter exit found nothing to finish: every row it had queued
# was lost, and run.json never recorded an end.
_live: dict[int, Closable] = {}
_uncaught: list[BaseException] = []
_previous_excepthook: Any = None  # set while distlog's hook is installed
# signum -> the handler that was installed before ours (what we chain to and restore).
_previous_handlers: dict[int, Any] = {}
_signal_users: dict[int, weakref.WeakSet[Closable]] = {}
_handling: set[int] = set()
_fork_hook: list[bool] = []  # registered once per process: os.register_at_fork cannot undo it


def interactive() -> bool:
    """True in a REPL or a Jupyter kernel, where Ctrl-C interrupts a cell, not the job."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or "ipykernel" in sys.modules


def default_signals() -> tuple[int, ...]:
    """SIGTERM and SIGINT; SIGTERM only in an interactive session."""
    if interactive():
        return tuple(s for s in DEFAULT_SIGNALS if s != signal.SIGINT)
    return DEFAULT_SIGNALS


def exit_code_for_signal(signum: int) -> int:
    """The shell's convention for a process ended by a signal: ``128 + signum``."""
    return 128 + int(signum)


def exit_code_of(exc: BaseException | None) -> int:
    """The process exit status an exception stands for (0 for None)."""
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    if isinstance(exc, KeyboardInterrupt):
        return exit_code_for_signal(signal.SIGINT)
    return 1


def register(logger: Closable, signals: Iterable[int] = ()) -> None:
    """Track an open logger; install handlers for ``signals`` (writer, main thread only).

    The first open logger installs the exception hook and the exit handler.
    """
    if not _live:
        _install_process_hooks()
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_disown_in_forked_child)
        _fork_hook.append(True)
    _live[id(logger)] = logger
    for signum in signals:
        if _install(signum):
            _signal_users.setdefault(signum, weakref.WeakSet()).add(logger)


def unregister(logger: Closable) -> None:
    """Forget a finished logger; restore previous handlers and hooks nobody needs any more."""
    if _live.get(id(logger)) is logger:
        del _live[id(logger)]
    for signum, users in list(_signal_users.items()):
        users.discard(logger)
        if not users:
            del _signal_users[signum]
            _uninstall(signum)
    if not _live:
        _uninstall_process_hooks()


def _install_process_hooks() -> None:
    global _previous_excepthook
    if _previous_excepthook is None:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _record_uncaught
    atexit.unregister(_finish_open_loggers)  # at most once
    atexit.register(_finish_open_loggers)


def _uninstall_process_hooks() -> None:
    global _previous_excepthook
    atexit.unregister(_finish_open_loggers)
    if _previous_excepthook is not None:
        if sys.excepthook is _record_uncaught:  # someone else's hook on top stays
            sys.excepthook = _previous_excepthook
            _previous_excepthook = None


def process_hooks_installed() -> bool:
    """True while distlog's exception hook is installed (for tests and diagnostics)."""
    return sys.excepthook is _record_uncaught


def installed_signals() -> list[int]:
    """Signals whose handler is currently distlog's (for tests and diagnostics)."""
    return sorted(s for s in _previous_handlers if signal.getsignal(s) is _on_signal)


def _install(signum: int) -> bool:
    if signum in _previous_handlers:
        return signal.getsignal(signum) is _on_signal
    if threading.current_thread() is not threading.main_thread():
        return False  # Python only lets the main thread install handlers
    try:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:
            return False  # the process chose to ignore it: so do we
        signal.signal(signum, _on_signal)
    except (ValueError, OSError):
        return False
    _previous_handlers[signum] = previous
    return True


def _uninstall(signum: int) -> None:
    previous = _previous_handlers.pop(signum, None)
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    except (ValueError, OSError):
        pass


def _on_signal(signum: int, frame: Any) -> None:
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if signum not in _handling:
        _handling.add(signum)
        try:
            code = exit_code_for_signal(signum)
            for logger in list(_live.values()):
                try:
                    logger.close_locally(code, timeout=SIGNAL_FINISH_SECONDS)
                except Exception as exc:  # the signal must still end the process
                    print(
                        f"distlog: finishing a logger on signal {signum} failed: {exc}",
                        file=sys.stderr,
                    )
        finally:
            _handling.discard(signum)
    # Now do what would have happened without distlog.
    _signal_users.pop(signum, None)
    _uninstall(signum)
    if callable(previous):
        previous(signum, frame)
        return
    # SIG_DFL (or a handler installed from C, which Python reports as None): die of the signal.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _disown_in_forked_child() -> None:
    """In a forked child: the open loggers are the parent's. Disown them and put the signal
    handlers and exit hooks back as they were before distlog (see the module docstring).

    Runs right after ``fork`` in the child, where a lock another parent thread held stays held
    forever: nothing here takes one."""
    if not _live:
        return
    copies = list(_live.values())
    _live.clear()
    _signal_users.clear()
    _uncaught.clear()
    _handling.clear()
    for signum in list(_previous_handlers):
        _uninstall(signum)
    _uninstall_process_hooks()
    for logger in copies:
        try:
            logger.disown()
        except Exception as exc:  # never break the child's start over a logger it won't use
            print(f"distlog: disowning a logger in a forked child failed: {exc}", file=sys.stderr)


def _record_uncaught(tp: Any, value: BaseException, tb: Any) -> None:
    _uncaught.append(value)
    (_previous_excepthook or sys.__excepthook__)(tp, value, tb)


def exit_code_at_exit() -> int:
    """The exit code an interpreter exit stands for, as far as Python lets us know.

    1 after an uncaught exception (130 for ``KeyboardInterrupt``), else 0. The status passed to
    ``sys.exit`` is not visible to exit handlers; use ``with logger:`` or ``finish(exit_code)``
    to record it.
    """
    last = _uncaught[-1] if _uncaught else None
    if last is None and not interactive():
        last = getattr(sys, "last_value", None)  # set even when the excepthook was replaced
    if last is None:
        return 0
    return exit_code_for_signal(signal.SIGINT) if isinstance(last, KeyboardInterrupt) else 1


def _finish_open_loggers() -> None:
    code = exit_code_at_exit()
    for logger in list(_live.values()):
        try:
            logger.finish_at_exit(code)
        except Exception as exc:  # at exit there is nobody left to raise to
            warnings.warn(f"distlog: finishing a logger at exit failed: {exc}", stacklevel=1)
