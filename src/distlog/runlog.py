"""The local run directory format: how values are encoded in ``metrics.jsonl`` and read back.

JSON has no NaN or infinities, and Python's ``json`` would write them as bare ``NaN`` tokens that
strict readers reject. distlog writes them as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` instead, so every line is strict JSON; :func:`read_metrics` restores the floats.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
MEDIA_DIR = "media"
RESERVED_KEYS = ("step", "time", "media")
"""Columns every ``metrics.jsonl`` row has itself: no metric may be called so."""

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_value(value: float) -> float | str:
    """A float as it is stored in ``metrics.jsonl``: itself, or a string for NaN and infinities."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def decode_value(value: Any) -> Any:
    """Inverse of :func:`encode_value` for one stored value."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value


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

    For code that needs the run's id before :class:`distlog.Logger` records its start (a tracker
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
