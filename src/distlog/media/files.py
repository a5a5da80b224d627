"""Encode media items into files under ``<run_dir>/media/`` for the local run log.

Called by [JsonlSink][distlog.sinks.jsonl.JsonlSink] on the logger's writer thread, so PNG, GIF and MP4
encoding never runs on the training thread. Each call returns the JSON-ready record that the
sink writes into ``metrics.jsonl``; file paths in it are relative to the run directory.

Keys become directories (``val/images`` -> ``media/val/images/``) after sanitising: only
``[A-Za-z0-9._-]`` survive, ``.``/``..`` components are neutralised, and the final path is
checked to be inside ``media/``, so no key can write outside the run directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from distlog.errors import LogTypeError, LogValueError
from distlog.media.items import Histogram, Images, MediaItem, Table, Video, Videos
from distlog.runlog import encode_value

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_COMPONENT = 100


def safe_relative_key(key: str) -> Path:
    """``key`` as a relative path of safe components (never absolute, never ``..``)."""
    parts = []
    for raw in str(key).replace("\\", "/").split("/"):
        part = _UNSAFE.sub("_", raw).strip()
        part = part.lstrip(".") or ("_" if raw else "")
        if part:
            parts.append(part[:_MAX_COMPONENT])
    return Path(*parts) if parts else Path("_")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


class _Files:
    """Allocates unique file names for one media record and keeps them inside ``media_dir``."""

    def __init__(self, media_dir: Path, key: str, step: int) -> None:
        self.media_dir = media_dir
        self.run_dir = media_dir.parent
        self.folder = media_dir / safe_relative_key(key)
        if not _inside(self.folder, media_dir):
            raise LogValueError(f"media key {key!r} would write outside {media_dir}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stem = f"step{int(step):08d}"

    def new(self, name: str, suffix: str) -> Path:
        base = f"{self.stem}_{name}"
        path = self.folder / f"{base}{suffix}"
        n = 1
        while path.exists():  # the same key twice at one step, or a restarted run
            path = self.folder / f"{base}-{n}{suffix}"
            n += 1
        return path

    def rel(self, path: Path) -> str:
        return path.relative_to(self.run_dir).as_posix()


def _need(module: str, what: str) -> Any:
    """Import an optional encoder, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"writing {what} needs {module.split('.')[0]}: pip install 'distlog[media]'"
        ) from exc


def _pil_image(arr: np.ndarray) -> Any:
    Image = _need("PIL.Image", "PNG images")

    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or arr.dtype != np.uint8:
        raise LogValueError(f"an image must be (H, W, C) uint8 with C in 1, 3, 4, got {arr.shape}")
    # pillow reads the mode from the shape: (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
    return Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[-1] == 1 else arr))


def write_png(arr: np.ndarray, path: Path) -> None:
    """One ``(H, W, C)`` uint8 image as a PNG file."""
    _pil_image(arr).save(path, format="PNG")


def write_gif(video: Video, path: Path) -> None:
    """Frames as a looping GIF (pillow); alpha is dropped, GIF has no real alpha channel."""
    iio = _need("imageio.v3", "GIF videos")
    frames = video.frames
    frames = frames[..., 0] if frames.shape[-1] == 1 else frames[..., :3]
    duration_ms = 1000.0 / video.fps
    iio.imwrite(path, np.ascontiguousarray(frames), extension=".gif", duration=duration_ms, loop=0)


def write_mp4(video: Video, path: Path) -> None:
    """Frames as H.264 MP4 (imageio-ffmpeg), padded to even sizes as yuv420p requires."""
    iio2 = _need("imageio.v2", "MP4 videos")
    _need("imageio_ffmpeg", "MP4 videos")
    frames = video.frames
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    frames = frames[..., :3]
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    writer = iio2.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=video.fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _json_number(value: Any) -> Any:
    return encode_value(value) if isinstance(value, float) else value


def save_media(item: MediaItem, media_dir: Path, key: str, step: int) -> dict[str, Any]:
    """Write ``item``'s files under ``media_dir`` and return the JSON record pointing at them.

    Records (paths relative to the run directory, i.e. ``media_dir``'s parent)::

        {"type": "images", "items": [{"path", "caption", "width", "height", "channels"}]}
        {"type": "videos", "items": [{"path", "caption", "format", "fps", "frames", ...}]}
        {"type": "histogram", "counts": [...], "edges": [...], "nonfinite": n}
        {"type": "table", "path": "media/.../stepN_table.json", "columns": [...], "rows": n}

    A table's JSON file holds ``{"columns": [...], "data": [[cell, ...], ...]}`` with image
    cells as ``{"type": "image", "path": ...}`` and non-finite floats as strings.
    """
    media_dir = Path(media_dir)
    if isinstance(item, Histogram):
        counts = np.asarray(item.counts)
        edges = np.asarray(item.edges, dtype=np.float64)
        return {
            "type": "histogram",
            "counts": [int(c) for c in counts.tolist()],
            "edges": [_json_number(float(e)) for e in edges.tolist()],
            "nonfinite": int(getattr(item, "nonfinite", 0)),
        }
    files = _Files(media_dir, key, step)
    if isinstance(item, Images):
        captions: list[str | None] = [None] * len(item.images)
        if item.captions is not None:
            captions = list(item.captions)
        out: list[dict[str, Any]] = []
        for i, (arr, cap) in enumerate(zip(item.images, captions, strict=True)):
            path = files.new(str(i), ".png")
            write_png(arr, path)
            h, w, c = arr.shape
            out.append(
                {
                    "path": files.rel(path),
                    "caption": cap,
                    "width": int(w),
                    "height": int(h),
                    "channels": int(c),
                }
            )
        return {"type": "images", "items": out}
    if isinstance(item, Videos):
        out = []
        for i, video in enumerate(item.videos):
            fmt = video.format
            path = files.new(str(i), f".{fmt}")
            if fmt == "gif":
                write_gif(video, path)
            elif fmt == "mp4":
                write_mp4(video, path)
            else:
                raise LogValueError(f"media {key!r}: unknown video format {fmt!r}")
            t, h, w, c = video.frames.shape
            out.append(
                {
                    "path": files.rel(path),
                    "caption": video.caption,
                    "format": fmt,
                    "fps": float(video.fps),
                    "frames": int(t),
                    "width": int(w),
                    "height": int(h),
                }
            )
        return {"type": "videos", "items": out}
    if isinstance(item, Table):
        data = []
        for r, row in enumerate(item.rows):
            cells = []
            for c, cell in enumerate(row):
                if isinstance(cell, np.ndarray):
                    path = files.new(f"table_r{r}_c{c}", ".png")
                    write_png(cell, path)
                    cells.append({"type": "image", "path": files.rel(path)})
                else:
                    cells.append(_json_number(cell))
            data.append(cells)
        path = files.new("table", ".json")
        path.write_text(
            json.dumps({"columns": list(item.columns), "data": data}, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        return {
            "type": "table",
            "path": files.rel(path),
            "columns": list(item.columns),
            "rows": len(item.rows),
        }
    raise LogTypeError(f"media {key!r}: cannot save a {type(item).__name__}")


__all__ = ["safe_relative_key", "save_media", "write_gif", "write_mp4", "write_png"]
