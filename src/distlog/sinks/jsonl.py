"""The embedded default sink: a local run directory with one JSON object per flush."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from distlog import runlog
from distlog.runlog import cut_torn_tail

if TYPE_CHECKING:
    from distlog.media.items import MediaItem


class JsonlSink:
    """Writes ``<run_dir>/metrics.jsonl`` (appending, so a restarted job continues the file).

    A partial last line left by a killed writer is removed before appending (see
    ``distlog.runlog.cut_torn_tail``), so the file stays one complete JSON object per line.

    Each row is flushed to the OS as soon as it is written, so a crash loses no written row.
    ``fsync=True`` also forces it to disk (slower; for jobs that fear power loss).
    """

    def __init__(self, run_dir: str | Path, *, fsync: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        path = self.run_dir / runlog.METRICS_FILE
        cut_torn_tail(path)
        self._fh: IO[str] | None = path.open("a", encoding="utf-8")

    def _write(self, row: Mapping[str, Any]) -> None:
        if self._fh is None:
            raise RuntimeError(f"JsonlSink for {self.run_dir} is closed")
        self._fh.write(runlog.encode_row(row) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._write({"step": step, "time": round(time.time(), 3), **values})

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        from distlog.media.files import save_media

        record = save_media(item, self.run_dir / runlog.MEDIA_DIR, key, step)
        self._write({"step": step, "time": round(time.time(), 3), "media": {key: record}})

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Merge ``config`` into ``config.json`` (nested dicts merged, later values win), as
        wandb and MLflow keep every call's keys; written as strict JSON, with non-finite floats
        as the strings ``metrics.jsonl`` uses."""
        path = self.run_dir / runlog.CONFIG_FILE
        merged = _merge(_read_config(path), _strict(config))
        tmp = path.with_suffix(".json.tmp")
        text = json.dumps(merged, indent=2, sort_keys=True, allow_nan=False, default=str)
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # noqa: A002
        """Copy a file, or a directory's contents, into ``<run_dir>/artifacts/<name>/`` (the
        layout wandb and MLflow give them too)."""
        import shutil

        from distlog.media.files import safe_relative_key

        target = self.run_dir / runlog.ARTIFACTS_DIR / safe_relative_key(name)
        target.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target / path.name)

    def close(self, exit_code: int = 0) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _strict(value: Any) -> Any:
    """``value`` with non-finite floats encoded as in ``metrics.jsonl`` and mapping keys as the
    strings JSON makes of them (so a later call's keys merge with what was read back)."""
    if isinstance(value, float):
        return runlog.encode_value(value)
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _read_config(path: Path) -> dict[str, Any]:
    """The config an earlier call (or start of the run) wrote; empty when none is readable."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def _merge(base: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``new``, recursing where both hold a dict."""
    out = dict(base)
    for key, value in new.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, Mapping):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out
