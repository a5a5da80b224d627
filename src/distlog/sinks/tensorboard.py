"""TensorBoard event files through ``torch.utils.tensorboard.SummaryWriter``.

What lands where in TensorBoard:

- scalars: one scalar series per key (the Scalars tab);
- [Images][distlog.media.Images]: one image per tag, ``key`` for a single image and
  ``key/0``, ``key/1``, ... for a batch; captions go to the text tab under ``key/captions``;
- [Videos][distlog.media.Videos]: animated GIFs in the Images tab, tagged like images. This is
  the same record ``SummaryWriter.add_video`` writes, but encoded with Pillow: torch's
  ``add_video`` needs ``moviepy.editor``, which moviepy 2 removed, and then silently writes
  nothing. No moviepy is needed. Frames with at most 256 colours keep them exactly; richer
  frames are quantised to 256 (GIF's limit). TensorBoard shows GIFs only, so an item's
  ``format="mp4"`` is ignored here;
- [Histogram][distlog.media.Histogram]: ``add_histogram_raw`` from the counts and edges (min, max,
  sum and sum of squares are estimated from the bin centres of the non-empty bins);
- [Table][distlog.media.Table]: a markdown table in the Text tab; image cells are written as
  images ``key/<column>/<row>`` and shown as ``[image HxW]`` in the table;
- the config: pretty JSON in the Text tab under ``config``.

Needs the ``tensorboard`` extra: ``pip install distlog[tensorboard]``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distlog.media.items import Histogram, Images, Table, Video, Videos

if TYPE_CHECKING:
    from distlog.media.items import MediaItem

__all__ = ["TensorBoardSink", "require_tensorboard"]

_INSTALL_HINT = "pip install 'distlog[tensorboard]'"


def require_tensorboard() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            f"TensorBoardSink needs the tensorboard package: {_INSTALL_HINT} ({exc})"
        ) from exc
    return SummaryWriter


def _import_pil_image() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            f"TensorBoardSink needs Pillow to write images and videos: {_INSTALL_HINT}"
        ) from exc
    return Image


def _item_tags(key: str, count: int) -> list[str]:
    """``key`` for a single item, ``key/0`` ... ``key/N-1`` for a batch."""
    return [key] if count == 1 else [f"{key}/{i}" for i in range(count)]


def _gif_frame(image_mod: Any, frame: np.ndarray) -> Any:
    """One ``(H, W, C)`` uint8 frame as a Pillow image a GIF can hold (256 colours at most).

    Frames with at most 256 colours keep them exactly (a palette built with numpy); richer ones
    are quantised with Pillow's fast octree, about 10x faster than its default median cut.
    """
    channels = frame.shape[-1]
    if channels == 1:
        return image_mod.fromarray(np.ascontiguousarray(frame[..., 0]))
    rgb = np.ascontiguousarray(frame[..., :3])
    packed = (
        (rgb[..., 0].astype(np.uint32) << 16)
        | (rgb[..., 1].astype(np.uint32) << 8)
        | rgb[..., 2].astype(np.uint32)
    )
    colours, index = np.unique(packed.reshape(-1), return_inverse=True)
    if len(colours) > 256:
        return image_mod.fromarray(rgb).quantize(method=image_mod.Quantize.FASTOCTREE)
    height, width = packed.shape
    picture = image_mod.frombytes("P", (width, height), index.astype(np.uint8).tobytes())
    palette = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1)
    picture.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    return picture


def encode_gif(frames: np.ndarray, fps: float) -> bytes:
    """An animated GIF of ``(T, H, W, C)`` uint8 frames, looping forever (alpha is dropped)."""
    image_mod = _import_pil_image()
    pictures = [_gif_frame(image_mod, frame) for frame in frames]
    buffer = io.BytesIO()
    duration_ms = max(1, round(1000.0 / fps)) if fps > 0 else 100
    pictures[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=duration_ms,
        loop=0,
    )
    return buffer.getvalue()


def _markdown_cell(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"[image {value.shape[0]}x{value.shape[1]}]"
    if value is None:
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    """A GitHub-style markdown table, which TensorBoard's Text tab renders."""
    header = "| " + " | ".join(_markdown_cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join(" --- " for _ in table.columns) + "|"
    lines = [header, rule]
    for row in table.rows:
        lines.append("| " + " | ".join(_markdown_cell(v) for v in row) + " |")
    return "\n".join(lines)


def histogram_stats(hist: Histogram) -> dict[str, Any]:
    """The arguments of ``SummaryWriter.add_histogram_raw`` for binned data.

    TensorBoard wants min, max, sum and sum of squares of the raw values, which binning lost;
    they are estimated from the non-empty bins (edges for min and max, centres for the sums).
    """
    counts = np.asarray(hist.counts, dtype=np.float64).reshape(-1)
    edges = np.asarray(hist.edges, dtype=np.float64).reshape(-1)
    centres = (edges[:-1] + edges[1:]) / 2.0
    filled = np.flatnonzero(counts > 0)
    if filled.size:
        low, high = float(edges[filled[0]]), float(edges[filled[-1] + 1])
    else:
        low, high = float(edges[0]), float(edges[-1])
    with np.errstate(over="ignore", invalid="ignore"):  # |values| past 1e154: inf, no warning
        total = float((counts * centres).sum())
        squares = float((counts * centres * centres).sum())
    return {
        "min": low,
        "max": high,
        "num": float(counts.sum()),
        "sum": total,
        "sum_squares": squares,
        "bucket_limits": edges[1:].tolist(),
        "bucket_counts": counts.tolist(),
    }


class TensorBoardSink:
    """Writes every flush to TensorBoard event files under ``log_dir``.

    Args:
        log_dir: the run's directory, e.g. ``runs/exp1``; point ``tensorboard --logdir`` at it
            or at its parent.
        flush_every_row: flush the event file after each row of scalars, so a crash loses no
            written row (the writer thread pays for it, not the training loop).
        purge_step: when resuming a run at this step, TensorBoard hides events with a step at or
            after it that the interrupted run wrote, so curves do not double back.
        flush_secs: passed to ``SummaryWriter``: how often its thread flushes by itself.
        max_queue: passed to ``SummaryWriter``: events held before a flush is forced.
        filename_suffix: passed to ``SummaryWriter``.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        flush_every_row: bool = True,
        purge_step: int | None = None,
        flush_secs: int = 30,
        max_queue: int = 100,
        filename_suffix: str = "",
    ) -> None:
        summary_writer = require_tensorboard()
        self.log_dir = Path(log_dir)
        self.flush_every_row = flush_every_row
        self._writer: Any = summary_writer(
            log_dir=str(self.log_dir),
            purge_step=purge_step,
            flush_secs=flush_secs,
            max_queue=max_queue,
            filename_suffix=filename_suffix,
        )

    @property
    def writer(self) -> Any:
        """The underlying ``SummaryWriter``, for anything distlog does not log itself."""
        if self._writer is None:
            raise RuntimeError(f"TensorBoardSink for {self.log_dir} is closed")
        return self._writer

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One event holding every key of the row (what ``add_scalar`` writes, once per key)."""
        from torch.utils.tensorboard.summary import Summary

        writer = self.writer
        summary = Summary(
            value=[Summary.Value(tag=key, simple_value=float(v)) for key, v in values.items()]
        )
        writer._get_file_writer().add_summary(summary, step)
        if self.flush_every_row:
            writer.flush()

    def log_media(self, step: int, key: str, item: MediaItem) -> None:
        if isinstance(item, Images):
            self._log_images(step, key, item)
        elif isinstance(item, Videos):
            self._log_videos(step, key, item)
        elif isinstance(item, Histogram):
            self.writer.add_histogram_raw(key, global_step=step, **histogram_stats(item))
        elif isinstance(item, Table):
            self._log_table(step, key, item)
        else:
            raise TypeError(f"TensorBoardSink cannot write {type(item).__name__} under {key!r}")
        self.writer.flush()

    def _log_images(self, step: int, key: str, item: Images) -> None:
        _import_pil_image()
        tags = _item_tags(key, len(item.images))
        for tag, image in zip(tags, item.images, strict=True):
            self.writer.add_image(tag, image, global_step=step, dataformats="HWC")
        if item.captions and any(item.captions):
            lines = [
                f"- `{tag}`: {caption}" for tag, caption in zip(tags, item.captions, strict=False)
            ]
            self.writer.add_text(f"{key}/captions", "\n".join(lines), global_step=step)

    def _log_videos(self, step: int, key: str, item: Videos) -> None:
        tags = _item_tags(key, len(item.videos))
        captions = []
        for tag, video in zip(tags, item.videos, strict=True):
            self._log_video(step, tag, video)
            if video.caption:
                captions.append(f"- `{tag}`: {video.caption}")
        if captions:
            self.writer.add_text(f"{key}/captions", "\n".join(captions), global_step=step)

    def _log_video(self, step: int, tag: str, video: Video) -> None:
        from torch.utils.tensorboard.summary import Summary

        frames = np.asarray(video.frames)
        gif = encode_gif(frames, video.fps)
        _, height, width, channels = frames.shape
        image = Summary.Image(
            height=height,
            width=width,
            colorspace=min(channels, 3),
            encoded_image_string=gif,
        )
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self.writer._get_file_writer().add_summary(summary, step)

    def _log_table(self, step: int, key: str, table: Table) -> None:
        for row_index, row in enumerate(table.rows):
            for column, cell in zip(table.columns, row, strict=False):
                if isinstance(cell, np.ndarray):
                    self.writer.add_image(
                        f"{key}/{column}/{row_index}", cell, global_step=step, dataformats="HWC"
                    )
        self.writer.add_text(key, table_markdown(table), global_step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.writer.add_text("config", f"```json\n{text}\n```", global_step=0)
        self.writer.flush()

    def log_artifact(self, path: Path, name: str, type: str) -> None:  # noqa: A002
        """Artifacts are not shown here (a no-op)."""

    def close(self, exit_code: int = 0) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
