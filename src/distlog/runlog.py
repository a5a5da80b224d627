"""The local run directory format: how values are encoded in ``metrics.jsonl`` and read back.

JSON has no NaN or infinities, and Python's ``json`` would write them as bare ``NaN`` tokens that
strict readers reject. distlog writes them as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` instead, so every line is strict JSON; [read_metrics][distlog.runlog.read_metrics] restores the floats.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
import warnings
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from distlog.errors import RunDirError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
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
    """The ``step`` of the last complete row of ``<run_dir>/metrics.jsonl`` (None if none).

    A restarted job resumes after it: rows up to it were already written. Reads the file from
    its end, so it costs the same for a run of ten rows or of a million.
    """
    path = Path(run_dir) / METRICS_FILE
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return None
    with fh:
        for _, raw in lines_from_end(fh):
            try:
                row = json.loads(raw)
            except ValueError:
                continue  # empty, or a torn last line
            if isinstance(row, dict) and type(row.get("step")) is int:
                return int(row["step"])
    return None


def read_run_info(run_dir: str | Path) -> dict[str, Any] | None:
    """The contents of ``<run_dir>/run.json``, or None when the run has none (or it is torn)."""
    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("id"), str) else None


def _write_run_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    path = run_dir / RUN_FILE
    tmp = path.with_name(f".{RUN_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a killed writer leaves the old file or the new one


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
    info = read_run_info(root)
    changed = info is None
    if info is None:
        root.mkdir(parents=True, exist_ok=True)
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
    info = read_run_info(root) or {"id": new_run_id(), "created": round(time.time(), 3)}
    previous = info.get("starts")
    starts: list[Any] = previous if isinstance(previous, list) else []
    starts.append(
        {
            "time": round(time.time(), 3),
            "world_size": world_size,
            "restart": restart,
            "resumed_after_step": resumed_after,
        }
    )
    launch = launch_id()
    if launch is not None:
        starts[-1]["launch"] = launch
    info.update(starts=starts, world_size=world_size, exit_code=None, ended=None)
    _write_run_info(root, info)
    return info


def end_run(run_dir: str | Path, *, exit_code: int, last_step: int | None) -> None:
    """Record how the run ended (exit code, time, last written step) in ``run.json``."""
    root = Path(run_dir)
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


def launch_id() -> str | None:
    """An id the launcher keeps across the restarts of one job (None when there is none).

    ``TORCHELASTIC_RUN_ID`` (torchrun's rendezvous id; a fresh uuid per ``--standalone`` launch)
    or ``SLURM_JOB_ID`` (kept by a requeue).
    """
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = os.environ.get(name, "").strip()
        if value and value != "none":
            return value
    return None


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
        raise RunDirError(
            f"{run_file} is not a distlog run file (no run id): this directory belongs to "
            "another tool; choose another run_dir"
        )
    if info is not None and info.get("starts"):
        return True
    if not metrics.is_file() or metrics.stat().st_size == 0:
        return False
    if last_step(root) is None:
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


def _newest_run(candidates: list[Path]) -> Path | None:
    """The candidate the current launch started (same launch id), else the last one started."""
    runs = [p for p in candidates if holds_run(p)]
    if not runs:
        return None
    launch = launch_id()
    if launch is not None:
        for path in reversed(runs):
            starts = (read_run_info(path) or {}).get("starts") or [{}]
            if isinstance(starts[-1], dict) and starts[-1].get("launch") == launch:
                return path
    return max(runs, key=_started_at)


def _started_at(path: Path) -> float:
    info = read_run_info(path) or {}
    starts = info.get("starts")
    if isinstance(starts, list) and starts and isinstance(starts[-1], dict):
        return float(starts[-1].get("time") or 0.0)
    return float(info.get("created") or path.stat().st_mtime)


def claim_run_dir(run_dir: str | Path, *, resume: bool | str, restart: int) -> tuple[Path, bool]:
    """Where this launch writes, and whether it continues the run there.

    ``resume=True`` continues ``run_dir`` itself. A restart (``restart`` > 0) with
    ``resume="auto"`` continues the run this job started: ``run_dir`` or one of its versions.
    Anything else is a new run: ``run_dir`` if it holds none, else its next free version
    ``<run_dir>-2``, ``<run_dir>-3``...
    """
    root = Path(run_dir)
    if resume is True:
        holds_run(root)  # refuse another tool's files
        return root, True
    versions = _versions(root)
    if resume == "auto" and restart > 0:
        found = _newest_run(versions)
        if found is not None:
            return found, True
    if not holds_run(root):
        return root, False
    n = 2
    while (root.parent / f"{root.name}-{n}").exists():
        n += 1
    return root.parent / f"{root.name}-{n}", False


def new_version_dir(parent: str | Path) -> Path:
    """A fresh ``<parent>/<YYYYmmdd-HHMMSS>`` directory name (``-2``... if that one is taken)."""
    base = Path(parent) / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 2
    while path.exists():
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return path


def choose_version(parent: str | Path, *, restart: int, resume_from: str | None) -> Path:
    """The run directory inside an experiment directory (``runs/<project>/<experiment>``).

    ``resume_from``: ``"latest"`` (the run last started there), a run id, or a version's name.
    Else a restart continues the run this job started, and a new launch gets
    [new_version_dir][distlog.runlog.new_version_dir].
    """
    root = Path(parent)
    children = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if resume_from is not None:
        if resume_from == "latest":
            found = _newest_run(children)
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
        found = _newest_run(children)
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
