"""Exceptions raised by distlog.

Every error that bad input can cause derives from [DistlogError][distlog.errors.DistlogError], so callers can catch
them in one place. Errors about a logged value are raised on the rank that logged it, at the
call, before any collective: the other ranks are never left waiting for it.
"""

from __future__ import annotations


class DistlogError(Exception):
    """Base class of every distlog error."""


class LogValueError(DistlogError, ValueError):
    """A value, key, reduction or media input that distlog cannot log. The message names the key."""


class LogTypeError(DistlogError, TypeError):
    """A value or key of a type that distlog cannot log. The message names the key."""


class LoggerClosedError(DistlogError, RuntimeError):
    """The logger was used after [Logger.finish][distlog.logger.Logger.finish], or in a forked
    child of the process that created it (a ``DataLoader`` worker)."""


FINISHED = "this distlog.Logger is finished; create a new one to log again"
"""The message of a [LoggerClosedError][distlog.errors.LoggerClosedError] after ``finish``."""


class LogUsageError(DistlogError, RuntimeError):
    """A call made where the logger cannot honour it, e.g. ``flush()`` from a second thread
    while another thread's flush runs (``log_*`` may come from any thread; ``flush`` and
    ``finish`` from one at a time). Raised at once, before any collective."""


class KeyConflictError(DistlogError, ValueError):
    """Ranks logged the same key with different reductions; raised on every rank at the flush."""


class RankDivergenceError(DistlogError, RuntimeError):
    """Ranks stopped flushing together: one is missing, crashed, or flushes on another schedule.

    Raised on every rank that noticed it, naming the log step and, where known, the ranks.
    """


class RunDirError(DistlogError, ValueError):
    """A run directory distlog cannot use: it holds another tool's files under distlog's names,
    or the run asked to be resumed is not there. Raised on every rank of the logger's group."""
