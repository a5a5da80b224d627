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
        path = self.run_dir / runlog.CONFIG_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
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
