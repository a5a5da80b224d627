"""The local run directory format: how values are encoded in ``metrics.jsonl`` and read back.

JSON has no NaN or infinities, and Python's ``json`` would write them as bare ``NaN`` tokens that
strict readers reject. distlog writes them as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` instead, so every line is strict JSON; [read_metrics][distlog.runlog.read_metrics] restores the floats.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from distlog.errors import RunDirError

try:
    import fcntl
except ImportError:  # not on Windows: claims still exclude each other through O_EXCL
    fcntl = None  # type: ignore[assignment]

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
CLAIM_FILE = ".distlog-claim"
"""Left in a run directory by the launch that chose it for a new run, until its start is in
``run.json``: a launch choosing the same directory at the same moment takes the next version."""
MEDIA_DIR = "media"
ARTIFACTS_DIR = "artifacts"
RESERVED_KEYS = ("step", "time", "media")
"""Columns every ``metrics.jsonl`` row has itself: no metric may be called so."""

SPREAD_SUFFIXES = ("rank_min", "rank_max", "rank_std", "rank_argmax")
"""The columns ``spread=True`` adds to a row as ``<key>/<suffix>`` (the aggregation core's
names; a test keeps the two equal). Readers fold them into their key."""

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_value(value: float) -> float | str:
    """A float as it is stored in ``metrics.jsonl``: itself, or a string for NaN and infinities."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def decode_value(value: Any) -> Any:
    """Inverse of `encode_value` for one stored value."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value


def split_spread(column: str, row_keys: Collection[str]) -> tuple[str, str] | None:
    """``("time/step_ms", "rank_max")`` for ``"time/step_ms/rank_max"`` when ``time/step_ms`` is
    in ``row_keys``; None for any other column."""
    base, _, suffix = column.rpartition("/")
    if suffix in SPREAD_SUFFIXES and base in row_keys:
        return base, suffix
    return None


def encode_row(row: Mapping[str, Any]) -> str:
    """One strict-JSON line (no trailing newline) for a row of scalars."""
    try:  # the common case, all finite: encoded in C
        return json.dumps(row, allow_nan=False, separators=(",", ":"))
    except ValueError:
        pass
    clean = {k: (encode_value(v) if isinstance(v, float) else v) for k, v in row.items()}
    return json.dumps(clean, allow_nan=False, separators=(",", ":"))


def iter_rows(run_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Yield every row of ``<run_dir>/metrics.jsonl`` with non-finite values restored.

    A final line cut short by a crash is skipped; a malformed line elsewhere raises ValueError
    naming the line number.
    """
    path = Path(run_dir) / METRICS_FILE
    with path.open("r", encoding="utf-8") as fh:
        lines = fh.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                return  # a torn last line from a killed writer
            raise ValueError(f"{path}:{number}: not a JSON line ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        yield {k: decode_value(v) for k, v in row.items()}


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All scalar rows (rows with a ``"step"`` and no ``"media"``) of a run directory, in order."""
    return [row for row in iter_rows(run_dir) if "media" not in row]


def lines_from_end(fh: BinaryIO, block: int = 1 << 16) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of a binary file's lines, the last first, read in blocks from its end.

    The first one yielded is what follows the last newline (``b""`` when the file ends with
    one), so a torn last line is seen first. The one tail scan of ``metrics.jsonl``: its cost
    does not grow with the file.
    """
    pos = fh.seek(0, os.SEEK_END)
    carry = b""  # the start of a line whose beginning lies in an earlier block
    while pos > 0:
        start = max(0, pos - block)
        fh.seek(start)
        lines = (fh.read(pos - start) + carry).split(b"\n")
        pos = start
        carry = lines[0] if pos > 0 else b""
        offset = start + len(b"\n".join(lines))
        for line in reversed(lines if pos == 0 else lines[1:]):
            offset -= len(line)
            yield offset, line
            offset -= 1


def torn_tail(run_dir: str | Path) -> int | None:
    """The byte offset of a last line of ``metrics.jsonl`` left without its newline, or None.

    A killed writer leaves one: the row was never complete. None when the file ends with a
    newline, is empty or does not exist.
    """
    return _torn_offset(Path(run_dir) / METRICS_FILE)


def _torn_offset(path: Path) -> int | None:
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return None
    with fh:
        for offset, line in lines_from_end(fh):
            return offset if line else None
    return None


def cut_torn_tail(path: Path) -> None:
    """Remove a last line of ``path`` (a ``metrics.jsonl``) that a killed writer left torn.

    Appending after it would glue the next row onto it and leave a malformed line in the middle
    of the file; the torn row was never complete, so nothing written is lost.
    """
    cut = _torn_offset(path)
    if cut is None:
        return
    with path.open("r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        fh.truncate(cut)
    warnings.warn(
        f"distlog: {path} ended with a partial row from a killed writer; removed its "
        f"{end - cut} bytes before appending",
        stacklevel=3,
    )


def last_step(run_dir: str | Path) -> int | None:
    """The largest ``step`` written to ``<run_dir>`` (None if no row has one).

    A restarted job resumes after it: rows up to it were already written. Reads
    ``metrics.jsonl`` from its end back to the last scalar row (media rows after it may carry
    an older step, which must not lower the result), so it costs the same for a run of ten rows
    or of a million, and takes ``run.json``'s ``last_step`` into account.
    """
    found = _tail_step(Path(run_dir) / METRICS_FILE)
    recorded = (read_run_info(run_dir) or {}).get("last_step")
    if type(recorded) is int and (found is None or recorded > found):
        return recorded
    return found


def _tail_step(path: Path) -> int | None:
    """The largest step among the last scalar row of ``path`` and the media rows after it."""
    try:
        fh = path.open("rb")
    except (FileNotFoundError, NotADirectoryError):
        return None
    best: int | None = None
    with fh:
        for _, raw in lines_from_end(fh):
            try:
                row = json.loads(raw)
            except ValueError:
                continue  # empty, or a torn last line
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                continue
            step = int(row["step"])
            best = step if best is None else max(best, step)
            if "media" not in row:
                break  # scalar rows are written in step order: nothing before it is later
    return best


def read_run_info(run_dir: str | Path) -> dict[str, Any] | None:
    """The contents of ``<run_dir>/run.json``, or None when the run has none, or it is not
    readable as distlog's (not UTF-8 JSON with a run id, unreadable, torn)."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return None
    return info if isinstance(info, dict) and isinstance(info.get("id"), str) else None


def _why_not_run_info(path: Path) -> str:
    """Why ``path`` (a ``run.json`` that [read_run_info][distlog.runlog.read_run_info] refused)
    is not distlog's, for an error message."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    except UnicodeDecodeError:
        return "not UTF-8 text"
    try:
        info = json.loads(text)
    except ValueError:
        return "not JSON"
    return "no run id" if isinstance(info, dict) else "not a JSON object"


def _write_run_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    path = run_dir / RUN_FILE
    # A name of this process and thread alone (callers hold the directory's lock), created
    # with the usual permissions, unlike a mkstemp file's 0600.
    tmp = path.with_name(f".{RUN_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # atomic: a killed writer leaves the old file or the new one
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


LOCK_WAIT_S = 30.0
"""How long a read-modify-write of ``run.json`` or a claim waits for another process's lock
on the run directory before giving up with a RunDirError (a stopped process holding it, a hung
network filesystem): never a silent, unbounded wait in ``Logger()`` or ``finish()``."""


@contextlib.contextmanager
def _locked(run_dir: Path, wait: float | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the directory itself for a read-modify-write of
    ``run.json`` or a claim, so two processes never interleave them (the second waits, at
    most ``wait`` seconds, default [LOCK_WAIT_S][distlog.runlog.LOCK_WAIT_S]).

    The directory is its own lock: no lock file is left in the run. Where ``flock`` is missing
    or refused (Windows, some network filesystems), this proceeds unlocked: claims still
    exclude each other (``O_EXCL``) and ``run.json`` is still replaced atomically.
    """
    try:
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        fd = -1
    try:
        if fd >= 0 and fcntl is not None:
            _flock(fd, run_dir, LOCK_WAIT_S if wait is None else wait)
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


def _flock(fd: int, run_dir: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise RunDirError(
                    f"run_dir {run_dir}: another process has held its lock for {wait:g}s (a "
                    "stopped or stuck process updating run.json, or a hung network "
                    "filesystem); gave up waiting"
                ) from None
            time.sleep(0.01)
        except OSError:
            return  # flock refused here (some network filesystems): proceed unlocked


def new_run_id() -> str:
    """A fresh run id: 8 lowercase hex characters (valid as a wandb run id too)."""
    return secrets.token_hex(4)


def ensure_run_info(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """The contents of ``<run_dir>/run.json``, created with a fresh id if the run has none.

    For code that needs the run's id before [Logger][distlog.Logger] records its start (a tracker
    made by ``LoggerMixin.make_sinks``, which runs before the logger is built): the logger then
    keeps that id. ``fields`` are set in the file (``None`` removes a key); ``id`` is not one of
    them. Like every write to ``run.json``, call it on the writer rank (global rank 0) only.
    """
    if "id" in fields:
        raise ValueError("ensure_run_info: the run id is not changed once created")
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        info = read_run_info(root)
        changed = info is None
        if info is None:
            info = {"id": new_run_id(), "created": round(time.time(), 3)}
        for key, value in fields.items():
            if value is None:
                changed = info.pop(key, None) is not None or changed
            elif info.get(key) != value:
                info[key] = value
                changed = True
        if changed:
            _write_run_info(root, info)
    return info


def start_run(
    run_dir: str | Path, *, world_size: int, restart: int = 0, resumed_after: int | None = None
) -> dict[str, Any]:
    """Create ``run.json`` (or record one more start in it) and return its contents.

    The run id is created once per run directory and kept across restarts, so every backend can
    continue the same run (``WandbSink(id=logger.run_id, resume="allow")``; the wandb sink of
    ``WandBLoggerMixin`` does so by itself).
    """
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):  # another process may be recording its own start or end
        info = read_run_info(root) or {"id": new_run_id(), "created": round(time.time(), 3)}
        previous = info.get("starts")
        starts: list[Any] = previous if isinstance(previous, list) else []
        start: dict[str, Any] = {
            "time": round(time.time(), 3),
            "world_size": world_size,
            "restart": restart,
            "resumed_after_step": resumed_after,
        }
        launches = _launch_ids()
        if launches:
            start["launch"] = next(iter(launches.values()))  # the one id older versions wrote
            start["launches"] = launches
        starts.append(start)
        info.update(starts=starts, world_size=world_size, exit_code=None, ended=None)
        _write_run_info(root, info)
        with contextlib.suppress(FileNotFoundError):
            (root / CLAIM_FILE).unlink()  # the start now says the directory is taken
    return info


def end_run(run_dir: str | Path, *, exit_code: int, last_step: int | None) -> None:
    """Record how the run ended (exit code, time, last written step) in ``run.json``."""
    root = Path(run_dir)
    if not root.is_dir():
        return
    with _locked(root):
        info = read_run_info(root)
        if info is None:
            return
        info.update(exit_code=int(exit_code), ended=round(time.time(), 3), last_step=last_step)
        starts = info.get("starts")
        if isinstance(starts, list) and starts and isinstance(starts[-1], dict):
            starts[-1]["exit_code"] = int(exit_code)  # how each attempt of a restarted job ended
        _write_run_info(root, info)


# ------------------------------------------------------------------------------ a run per launch
# One rule, used by Logger and the mixins alike: a launch writes a new run unless it resumes one
# on purpose (resume=True, the mixins' resume_from) or the launcher restarted it (torchrun
# --max-restarts, SLURM requeue). A new run never goes into a directory that holds another run:
# it gets the next free version of that name. Only global rank 0 calls these.


_LAUNCHERS = (
    ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"),
    ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"),
)
"""Each launcher's id (kept across the restarts it makes) and its restart counter, the
innermost launcher first."""


def _launch_ids() -> dict[str, str]:
    """Every launcher id of this process, by variable name (torchrun's ``"none"`` is no id)."""
    found = {}
    for name, _ in _LAUNCHERS:
        value = os.environ.get(name, "").strip()
        if value and value != "none":
            found[name] = value
    return found


def _count(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else 0


def launch_id() -> str | None:
    """The id of the launcher whose restart this is, else the first one set (None if none).

    ``TORCHELASTIC_RUN_ID`` (torchrun's rendezvous id: a fresh uuid per ``--standalone``
    launch, so it changes on every SLURM requeue) when ``TORCHELASTIC_RESTART_COUNT`` > 0;
    ``SLURM_JOB_ID`` (kept by a requeue) when ``SLURM_RESTART_COUNT`` > 0. Every id set is
    recorded in each start (``launches`` in ``run.json``).
    """
    keys = _restart_keys()
    return keys[0][1] if keys else None


def _restart_keys() -> list[tuple[str, str]]:
    """The ``(variable, id)`` pairs a restart looks its run up by, in order: the id of each
    launcher that restarted the job (innermost first), else every id set."""
    ids = _launch_ids()
    restarted = [
        (name, ids[name]) for name, counter in _LAUNCHERS if _count(counter) > 0 and name in ids
    ]
    return restarted or list(ids.items())


def _last_start(path: Path) -> dict[str, Any]:
    starts = (read_run_info(path) or {}).get("starts")
    if isinstance(starts, list) and starts and isinstance(starts[-1], dict):
        return starts[-1]
    return {}


def _started_by(start: Mapping[str, Any], name: str, value: str) -> bool:
    """Whether ``start`` (one entry of ``starts``) was made under launcher id ``name=value``."""
    launches = start.get("launches")
    if isinstance(launches, dict):
        return launches.get(name) == value
    return start.get("launch") == value  # written before every id was recorded: one id


def holds_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a run that was started (rows, or a start in ``run.json``).

    A ``run.json`` made by [ensure_run_info][distlog.runlog.ensure_run_info] with no start yet
    (a tracker took the id first) does not count. Files of another tool under distlog's names
    raise [RunDirError][distlog.errors.RunDirError] naming the file, instead of being appended
    to.
    """
    root = Path(run_dir)
    run_file, metrics = root / RUN_FILE, root / METRICS_FILE
    if root.exists() and not root.is_dir():
        raise RunDirError(f"run_dir {root} is a file, not a directory")
    info = read_run_info(root)
    if info is None and run_file.exists():
        # Another launch may have recorded its start between the read and this check (files
        # are replaced whole, so a second read sees all of it): two launches at the same
        # instant read as "another tool's directory" in 1 of ~10 suite runs on a busy host.
        info = read_run_info(root)
    if info is None and run_file.exists():
        raise RunDirError(
            f"{run_file} is not a distlog run file ({_why_not_run_info(run_file)}): this "
            "directory belongs to another tool; choose another run_dir"
        )
    if info is not None and info.get("starts"):
        return True
    if not metrics.is_file() or metrics.stat().st_size == 0:
        return False
    if _tail_step(metrics) is None:
        raise RunDirError(
            f"{metrics} has no distlog rows (no integer 'step'): this directory belongs to "
            "another tool; choose another run_dir"
        )
    return True


def _versions(run_dir: Path) -> list[Path]:
    """``run_dir`` and its numbered versions ``<name>-2``, ``<name>-3``... that exist, in order."""
    found = [run_dir] if run_dir.exists() else []
    prefix = run_dir.name + "-"
    numbered = []
    if run_dir.parent.is_dir():
        for path in run_dir.parent.iterdir():
            tail = path.name[len(prefix) :]
            if path.name.startswith(prefix) and tail.isdigit() and path.is_dir():
                numbered.append((int(tail), path))
    return found + [path for _, path in sorted(numbered)]


def _latest_run(candidates: list[Path]) -> Path | None:
    """The candidate holding the run started last (None if none holds a run)."""
    runs = [p for p in candidates if holds_run(p)]
    return max(runs, key=_started_at) if runs else None


def _run_of_this_job(candidates: list[Path]) -> Path | None:
    """The candidate whose last start this job made, for a restart to continue.

    Matched by the id of the launcher that restarted the job (see
    [launch_id][distlog.runlog.launch_id]); None when this job has a launcher id and no run
    matches it (the attempt that failed never started one: this is a new run, never another
    launch's). A job with no launcher id at all continues the run started last.
    """
    runs = [p for p in candidates if holds_run(p)]
    keys = _restart_keys()
    if not keys:
        return max(runs, key=_started_at) if runs else None
    for name, value in keys:
        mine = [p for p in runs if _started_by(_last_start(p), name, value)]
        if mine:
            return max(mine, key=_started_at)
    return None


def _number(value: Any) -> float | None:
    """``value`` as a finite float when it is a JSON number (not a string, not a bool)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _started_at(path: Path) -> float:
    """When the run in ``path`` last started, for ordering; tolerant of hand-edited files."""
    info = read_run_info(path) or {}
    when = _number(_last_start(path).get("time"))
    if when is None:
        when = _number(info.get("created"))
    if when is None:
        try:
            when = path.stat().st_mtime
        except OSError:
            when = 0.0
    return when


# A claim: which process chose a directory for a new run and has not recorded its start yet.
_CLAIM_TOKEN = secrets.token_hex(8)
_HOST = socket.gethostname()


def _claim_text() -> str:
    return json.dumps(
        {"pid": os.getpid(), "host": _HOST, "token": _CLAIM_TOKEN, "time": round(time.time(), 3)}
    )


def _claimed_by_other(path: Path) -> bool:
    """Whether ``path``'s claim file is another live launch's (not this process's, not left
    by a process of this host that has died since)."""
    try:
        claim = json.loads((path / CLAIM_FILE).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # unreadable: someone's, keep out
    if not isinstance(claim, dict):
        return True
    pid, host = claim.get("pid"), claim.get("host")
    if host != _HOST or type(pid) is not int:
        return True  # another machine's: its process cannot be checked from here
    if pid == os.getpid():
        return False  # ours (same token), or that of a dead process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # died before recording its start: the directory is free
    except OSError:
        return True  # alive, another user's
    return True


def _claim(path: Path) -> bool:
    """Claim ``path`` for a new run of this process; False when it holds a run or another
    live launch claimed it first. Creates ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if holds_run(path) or _claimed_by_other(path):
            return False
        with contextlib.suppress(FileNotFoundError):
            (path / CLAIM_FILE).unlink()  # ours already, or a dead process's
        try:
            fd = os.open(path / CLAIM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False  # unlocked (no flock here) and someone was quicker
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_claim_text())
        return True


def _claim_new(root: Path) -> Path:
    """``root`` claimed for a new run if it holds none, else the next free version."""
    if not holds_run(root) and _claim(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    n = 2
    while True:
        path = root.parent / f"{root.name}-{n}"
        n += 1
        try:
            path.mkdir()  # atomic: of two launches, one creates it, the other goes on
        except FileExistsError:
            continue
        if _claim(path):
            return path


def run_dir_path(run_dir: str | Path) -> Path:
    """The one rule for a run directory's path: ``~`` expanded (a config file's ``~/runs`` made
    a directory named ``~``), and a path without a name of its own (``.``, ``..``) resolved, so
    that its next version is ``<name>-2`` beside it, not a directory named ``-2`` inside it."""
    try:
        root = Path(run_dir).expanduser()
    except RuntimeError as exc:  # ~nosuchuser: a clear error, on every rank (a DistlogError)
        raise RunDirError(f"run_dir {run_dir}: cannot expand '~' ({exc})") from None
    return root.resolve() if root.name in ("", ".", "..") else root


def claim_run_dir(run_dir: str | Path, *, resume: bool | str, restart: int) -> tuple[Path, bool]:
    """Where this launch writes, and whether it continues the run there.

    ``resume=True`` continues ``run_dir`` itself. A restart (``restart`` > 0) with
    ``resume="auto"`` continues the run this job started: ``run_dir`` or one of its versions
    whose last start has this job's launcher id (see [launch_id][distlog.runlog.launch_id]).
    Anything else is a new run: ``run_dir`` if it holds none, else its next free version
    ``<run_dir>-2``, ``<run_dir>-3``... A new run's directory is created and claimed
    atomically, so two launches choosing at the same moment get two directories.
    """
    root = run_dir_path(run_dir)
    if resume is True:
        holds_run(root)  # refuse another tool's files
        return root, True
    if resume == "auto" and restart > 0:
        found = _run_of_this_job(_versions(root))
        if found is not None:
            return found, True
    return _claim_new(root), False


def new_version_dir(parent: str | Path) -> Path:
    """A fresh ``<parent>/<YYYYmmdd-HHMMSS>`` directory (``-2``... if that one is taken),
    created and claimed for a new run, so two launches in the same second get two."""
    base = Path(parent) / time.strftime("%Y%m%d-%H%M%S")
    base.parent.mkdir(parents=True, exist_ok=True)
    path, n = base, 2
    while True:
        try:
            path.mkdir()
        except FileExistsError:
            pass
        else:
            if _claim(path):
                return path
        path = base.with_name(f"{base.name}-{n}")
        n += 1


def choose_version(parent: str | Path, *, restart: int, resume_from: str | None) -> Path:
    """The run directory inside an experiment directory (``runs/<project>/<experiment>``).

    ``resume_from``: ``"latest"`` (the run last started there), a run id, or a version's name.
    Else a restart continues the run this job started (as in
    [claim_run_dir][distlog.runlog.claim_run_dir]), and a new launch gets
    [new_version_dir][distlog.runlog.new_version_dir].
    """
    root = Path(parent)
    children = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if resume_from is not None:
        if resume_from == "latest":
            found = _latest_run(children)
        else:
            found = next(
                (
                    p
                    for p in children
                    if p.name == resume_from or (read_run_info(p) or {}).get("id") == resume_from
                ),
                None,
            )
        if found is None:
            names = ", ".join(p.name for p in children if holds_run(p)) or "none"
            raise RunDirError(
                f"resume_from={resume_from!r}: no such run in {root} (runs there: {names})"
            )
        return found
    if restart > 0:
        found = _run_of_this_job(children)
        if found is not None:
            return found
    return new_version_dir(root)


def find_runs(root: str | Path, *, depth: int = 3) -> list[Path]:
    """Run directories at or below ``root`` (at most ``depth`` levels), oldest start first."""
    base = Path(root)
    found: list[Path] = []

    def walk(path: Path, level: int) -> None:
        if (path / RUN_FILE).is_file() or (path / METRICS_FILE).is_file():
            found.append(path)
        if level >= depth:
            return
        for child in sorted(p for p in path.iterdir() if p.is_dir() and p.name != MEDIA_DIR):
            walk(child, level + 1)

    if base.is_dir():
        walk(base, 0)
    return sorted(found, key=lambda p: (_started_at(p), str(p)))


def restart_count() -> int:
    """How many times the launcher restarted this job (torchrun elastic, SLURM requeue)."""
    for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"):
        raw = os.environ.get(name, "")
        if raw.strip().isdigit() and int(raw) > 0:
            return int(raw)
    return 0
