"""Read what wandb wrote for a run, offline, without a server.

wandb ships no reader for its ``.wandb`` files any more (``wandb.sdk.internal.datastore`` and
``wandb sync --view`` are gone), yet an offline run's history, config, summary and exit code live
only there. This module reads them back, for tests and for users who want to check a run before
(or instead of) ``wandb sync``.

The file is the LevelDB log format: a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0),
then 32 KiB blocks of chunks, each with a 7-byte header (CRC32 little-endian, length u16, type
u8: 1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST). A block tail shorter than 7 bytes is padding. Each
reassembled record is a protobuf ``wandb.proto.wandb_internal_pb2.Record``; decoding records needs
wandb installed, the framing does not.

Typical use::

    from distlog.wandb_offline import find_run_dirs, read_run
    run = read_run(find_run_dirs("/scratch/wandb", run_id="abc123")[-1])
    run.history      # one dict per committed wandb row
    run.rows_by_step("trainer/global_step")   # {step: {key: value}}
    run.config, run.summary, run.exit_code
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WandbFileError",
    "OfflineRun",
    "iter_chunks",
    "iter_payloads",
    "iter_records",
    "find_run_dirs",
    "read_run",
    "read_runs",
    "wandb_file_of",
    "has_exit_record",
    "last_logged_step",
]

FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """A ``.wandb`` file that is not one, or is corrupt before its end. Names the file and offset."""


def _check_header(data: bytes, name: str) -> None:
    if len(data) < len(FILE_HEADER) or data[:4] != b":W&B":
        raise WandbFileError(f"{name}: not a .wandb file (no ':W&B' header)")
    magic, version = struct.unpack("<HB", data[4:7])
    if magic != 0xBEE1 or version != 0:
        raise WandbFileError(
            f"{name}: unsupported .wandb header (magic {magic:#x}, version {version})"
        )


def iter_chunks(
    data: bytes, start: int = len(FILE_HEADER), *, name: str = "<bytes>"
) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(offset, type, payload)`` for each chunk from ``start`` (a block boundary or 7).

    A chunk cut short at the end of ``data`` (a writer still running, or killed) ends the
    iteration quietly; a checksum that does not match anywhere else raises
    `WandbFileError`, because that is corruption, not a torn tail.
    """
    pos = start
    size = len(data)
    while pos < size:
        left_in_block = BLOCK_SIZE - (pos % BLOCK_SIZE)
        if left_in_block < CHUNK_HEADER_SIZE:
            pos += left_in_block
            continue
        if pos + CHUNK_HEADER_SIZE > size:
            return
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0 and length == 0:  # zero-filled (preallocated) rest of the block
            pos += left_in_block
            continue
        end = pos + CHUNK_HEADER_SIZE + length
        if end > size:
            return
        payload = data[pos + CHUNK_HEADER_SIZE : end]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            if end == size or not any(data[end:]):
                return  # torn or zero-filled tail
            raise WandbFileError(f"{name}: checksum mismatch in the chunk at byte {pos}")
        if kind not in (FULL, FIRST, MIDDLE, LAST):
            raise WandbFileError(f"{name}: unknown chunk type {kind} at byte {pos}")
        yield pos, kind, payload
        pos = end


def iter_payloads(
    data: bytes, start: int = len(FILE_HEADER), *, name: str = "<bytes>"
) -> Iterator[bytes]:
    """Reassemble chunks into record payloads (serialized protobufs).

    Starting in the middle of a file (at a block boundary), fragments of a record that began
    before ``start`` are skipped.
    """
    parts: list[bytes] | None = None
    for _, kind, payload in iter_chunks(data, start, name=name):
        if kind == FULL:
            parts = None
            yield payload
        elif kind == FIRST:
            parts = [payload]
        elif kind == MIDDLE:
            if parts is not None:
                parts.append(payload)
        else:  # LAST
            if parts is not None:
                parts.append(payload)
                yield b"".join(parts)
            parts = None


def _record_class() -> Any:
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError as exc:
        raise ImportError(
            "reading .wandb records needs wandb's protobuf definitions: "
            "pip install 'distlog[wandb]'"
        ) from exc
    return wandb_internal_pb2.Record  # type: ignore[attr-defined]


def wandb_file_of(path: str | os.PathLike[str]) -> Path:
    """The ``run-<id>.wandb`` file of a run directory (or ``path`` itself if it is one)."""
    p = Path(path)
    if p.is_file():
        return p
    found = sorted(p.glob("*.wandb"))
    if not found:
        raise FileNotFoundError(f"no .wandb file in {p}")
    if len(found) > 1:
        raise WandbFileError(f"{p} holds several .wandb files: {[f.name for f in found]}")
    return found[0]


def iter_records(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield every ``Record`` protobuf of a ``.wandb`` file (or of a run directory), in order."""
    file = wandb_file_of(path)
    data = file.read_bytes()
    _check_header(data, str(file))
    record_cls = _record_class()
    for payload in iter_payloads(data, name=str(file)):
        record = record_cls()
        record.ParseFromString(payload)
        yield record


def has_exit_record(path: str | os.PathLike[str], *, tail_bytes: int = 4 * BLOCK_SIZE) -> bool:
    """True once wandb has written the run's exit record.

    Reads only the last few blocks (chunks never cross block boundaries, so parsing can start at
    any block), which keeps polling cheap even for large files.
    """
    file = wandb_file_of(path)
    try:
        with file.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - tail_bytes)
            start -= start % BLOCK_SIZE
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return False
    if start == 0:
        if len(data) < len(FILE_HEADER):
            return False
        data_start = len(FILE_HEADER)
    else:
        data_start = 0
    # Offsets must keep their place relative to block boundaries: ``start`` is a multiple of
    # the block size, so offsets within ``data`` have the same alignment.
    record_cls = _record_class()
    found = False
    for payload in iter_payloads(data, data_start, name=str(file)):
        record = record_cls()
        try:
            record.ParseFromString(payload)
        except Exception:  # a payload whose first part we skipped cannot be parsed: ignore it
            continue
        if record.WhichOneof("record_type") == "exit":
            found = True
    return found


def _item_value(item: Any) -> Any:
    """The Python value of a history/summary/config item (``value_json`` or a typed field)."""
    which = item.WhichOneof("value") if "value" in item.DESCRIPTOR.oneofs_by_name else None
    if which == "none":
        return None
    if which == "json":
        return json.loads(item.json)
    if which is not None:
        return getattr(item, which)
    if item.value_json == "":
        return None
    return json.loads(item.value_json)  # json accepts NaN, Infinity, -Infinity as wandb writes


def _item_path(item: Any) -> list[str]:
    if item.key:
        return [item.key]
    return list(item.nested_key)


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    node = target
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _remove_path(target: dict[str, Any], path: list[str]) -> None:
    node: Any = target
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


@dataclass
class OfflineRun:
    """Everything a ``.wandb`` file says about one run (one run directory).

    ``history`` holds one dict per committed wandb row, with wandb's own ``_step``,
    ``_runtime`` and ``_timestamp`` included; media values are the dicts wandb stores for them
    (``{"_type": "image-file", "path": ...}``). ``exit_code`` is None when the file has no exit
    record (the process was killed, or wandb had not finished writing when it was read).
    """

    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    resumed: bool = False
    starting_step: int = 0
    start_time: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def complete(self) -> bool:
        """True when the run ended with an exit record (``finish`` completed)."""
        return self.exit_code is not None

    def rows_by_step(self, step_key: str = "trainer/global_step") -> dict[int, dict[str, Any]]:
        """History merged per value of ``step_key``, without wandb's ``_`` bookkeeping keys.

        Several wandb rows with the same step (scalars, then media) become one dict.
        Rows without ``step_key`` are left out.
        """
        merged: dict[int, dict[str, Any]] = {}
        for row in self.history:
            if step_key not in row:
                continue
            step = int(row[step_key])
            target = merged.setdefault(step, {})
            for key, value in row.items():
                if key != step_key and not key.startswith("_"):
                    target[key] = value
        return merged

    def values(self, key: str, step_key: str = "trainer/global_step") -> dict[int, Any]:
        """``{step: value}`` of one key, over the rows that hold it."""
        return {
            int(row[step_key]): row[key] for row in self.history if key in row and step_key in row
        }


def read_run(path: str | os.PathLike[str]) -> OfflineRun:
    """Read one run directory (or its ``.wandb`` file)."""
    file = wandb_file_of(path)
    run = OfflineRun(path=file)
    for record in iter_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id = r.run_id
            run.project = r.project
            run.entity = r.entity
            run.group = r.run_group
            run.name = r.display_name
            run.tags = list(r.tags)
            run.resumed = bool(r.resumed)
            run.starting_step = int(r.starting_step)
            if r.HasField("start_time"):
                run.start_time = r.start_time.seconds + r.start_time.nanos / 1e9
            for item in r.config.update:
                _set_path(run.config, _item_path(item), _item_value(item))
            for item in r.summary.update:
                _set_path(run.summary, _item_path(item), _item_value(item))
        elif kind == "config":
            for item in record.config.update:
                _set_path(run.config, _item_path(item), _item_value(item))
            for item in record.config.remove:
                _remove_path(run.config, _item_path(item))
        elif kind == "summary":
            for item in record.summary.update:
                _set_path(run.summary, _item_path(item), _item_value(item))
            for item in record.summary.remove:
                _remove_path(run.summary, _item_path(item))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                path_parts = _item_path(item)
                if len(path_parts) == 1:
                    row[path_parts[0]] = _item_value(item)
                else:
                    _set_path(row, path_parts, _item_value(item))
            if "_step" not in row and record.history.HasField("step"):
                row["_step"] = record.history.step.num
            run.history.append(row)
        elif kind == "metric":
            m = record.metric
            name = m.name or m.glob_name
            entry: dict[str, Any] = {"glob": bool(m.glob_name)}
            if m.step_metric:
                entry["step_metric"] = m.step_metric
            run.metrics[name] = entry
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    run.config.pop("_wandb", None)
    run.summary.pop("_wandb", None)
    return run


_RUN_DIR_PREFIXES = ("offline-run-", "run-")


def _wandb_root(wandb_dir: str | os.PathLike[str] | None) -> Path:
    base = Path(wandb_dir) if wandb_dir is not None else Path(os.environ.get("WANDB_DIR", "."))
    return base / "wandb" if (base / "wandb").is_dir() else base


def _start_key(run_dir: Path) -> tuple[str, float, str]:
    """Sort key: the folder's timestamp, then the run record's start time (sub-second order)."""
    match = re.search(r"\d{8}_\d{6}", run_dir.name)
    stamp = match.group(0) if match else ""
    start = 0.0
    try:
        for record in iter_records(run_dir):
            if record.WhichOneof("record_type") == "run":
                start = record.run.start_time.seconds + record.run.start_time.nanos / 1e9
                break
    except (OSError, WandbFileError):
        pass
    return stamp, start, run_dir.name


def find_run_dirs(
    wandb_dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    *,
    offline_only: bool = False,
) -> list[Path]:
    """Run directories under ``wandb_dir`` (default ``$WANDB_DIR``), oldest first.

    ``wandb_dir`` may be the directory given as ``WANDB_DIR`` / ``dir=`` (which holds
    ``wandb/``) or that ``wandb/`` folder itself. With ``run_id``, only that run's folders: a
    resumed offline run has one folder per start, all with the same id, in start order.
    """
    root = _wandb_root(wandb_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if not child.is_dir() or child.is_symlink():
            continue
        prefixes = ("offline-run-",) if offline_only else _RUN_DIR_PREFIXES
        if not child.name.startswith(prefixes):
            continue
        # Two starts of one id in the same second get "<time>-<id>-1": match the file instead.
        wanted = f"run-{run_id}.wandb" if run_id is not None else "*.wandb"
        if not any(child.glob(wanted)):
            continue
        found.append(child)
    return sorted(found, key=_start_key)


def read_runs(
    wandb_dir: str | os.PathLike[str] | None = None, run_id: str | None = None
) -> list[OfflineRun]:
    """`read_run` for every folder `find_run_dirs` finds, oldest first."""
    return [read_run(d) for d in find_run_dirs(wandb_dir, run_id)]


def last_logged_step(
    runs: list[OfflineRun] | OfflineRun, step_key: str = "trainer/global_step"
) -> int | None:
    """The highest ``step_key`` logged by these runs (None when they logged none)."""
    items = runs if isinstance(runs, list) else [runs]
    steps = [
        int(row[step_key])
        for run in items
        for row in run.history
        if isinstance(row.get(step_key), (int, float))
    ]
    return max(steps) if steps else None
