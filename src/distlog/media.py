"""Media across ranks: the ready-to-write media items that sinks receive, and how they are made.

A media item is what a sink gets after validation, conversion and (when asked) gathering:
plain numpy arrays in uint8, so sinks only encode and write (on the logger's writer thread).

Which rank's media is written (see docs/media.md):

* ``ranks=0`` (the default for every kind): global rank 0 converts its own input and every other
  rank returns ``None`` at once, without looking at its input and without any communication.
* ``ranks="all"``, a list of global ranks, or another single rank: a *gathering call*. Every rank
  of the logger's group must make it. The ranks first exchange a small fixed-size header (call
  fingerprint, status, sizes), so a rank in a different media call, or a rank whose input was
  rejected, is noticed instead of hanging; then each chosen rank sends its items to rank 0 point
  to point as one uint8 tensor (JSON metadata + raw pixels). Nothing received is ever unpickled.
  Captions (table rows: a ``rank`` column) name the rank each item came from, and a byte cap per
  call bounds what travels, with a :class:`MediaWarning` when it is hit.

Float pixels are scaled to uint8 by one rule, decided over the whole call (all images or
videos of the batch together): values in [0, 1] are multiplied by 255; values in [-1, 1] with
some negative are mapped by ``(x + 1) * 127.5``; any other range is an error unless
``value_range=(lo, hi)`` is given, which maps lo to 0 and hi to 255. Results are rounded half to
even and clipped to [0, 255]. uint8 passes unchanged, bool maps to 0/255, and other integer
types must already lie in [0, 255] (or come with ``value_range``).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from distlog.errors import LogTypeError, LogValueError, RankDivergenceError

if TYPE_CHECKING:
    from distlog.world import World


@dataclass(frozen=True)
class Images:
    """A batch of images, each ``(H, W, C)`` uint8 with C in 1, 3, 4."""

    images: list[np.ndarray]
    captions: list[str] | None = None


@dataclass(frozen=True)
class Video:
    """One video: ``(T, H, W, C)`` uint8 frames with C in 1, 3, 4."""

    frames: np.ndarray
    fps: float = 4.0
    format: Literal["gif", "mp4"] = "gif"
    caption: str | None = None


@dataclass(frozen=True)
class Videos:
    """A batch of videos logged under one key."""

    videos: list[Video]


@dataclass(frozen=True)
class Histogram:
    """Bin ``counts`` (length B) over ``edges`` (length B + 1), like ``numpy.histogram``.

    ``nonfinite`` counts the NaN and infinite values that were left out (numpy would refuse them).
    """

    counts: np.ndarray
    edges: np.ndarray
    nonfinite: int = 0


TableCell = int | float | str | bool | None | np.ndarray
"""A table cell: a number, a string, None, or an image as an ``(H, W, C)`` uint8 array."""


@dataclass(frozen=True)
class Table:
    """Rows of cells under named columns; image cells are ``(H, W, C)`` uint8 arrays."""

    columns: list[str]
    rows: list[list[TableCell]] = field(default_factory=list)


MediaItem = Images | Videos | Histogram | Table

RanksArg = int | str | Sequence[int]
"""``0`` (rank 0 only, no communication), ``"all"``, a global rank, or a list of global ranks."""

DEFAULT_MAX_BYTES = 64 * 2**20
"""Per gathering call: the most pixel/row bytes that travel to (and are held by) rank 0."""

DEFAULT_MAX_ROWS = 10_000
"""Per table call: the most rows written."""

MAX_BINS = 1_000_000


class MediaWarning(UserWarning):
    """Media was left out: a cap was hit, or another rank's input was rejected. Rank 0 warns."""


# ---------------------------------------------------------------------------------------------
# conversion of user input (local, no communication)
# ---------------------------------------------------------------------------------------------


def _name(desc: str) -> str:
    return f"media {desc!r}"


def _check_desc(desc: Any) -> str:
    if not isinstance(desc, str) or not desc:
        raise LogTypeError(f"media key (desc) must be a non-empty string, got {desc!r}")
    return desc


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _as_tensor(x: Any, desc: str, what: str) -> torch.Tensor:
    """A torch view of a tensor or numpy array (no copy); anything else is a type error."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind in "USVO":
            raise LogTypeError(f"{_name(desc)}: {what} has dtype {x.dtype}, expected numbers")
        if x.dtype.kind == "c":
            raise LogTypeError(f"{_name(desc)}: {what} is complex ({x.dtype})")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise LogTypeError(
        f"{_name(desc)}: {what} must be a torch.Tensor or numpy array, got {type(x).__name__}"
    )


def _check_value_range(value_range: Any, desc: str) -> tuple[float, float] | None:
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise LogTypeError(
            f"{_name(desc)}: value_range must be a pair (lo, hi) of numbers, got {value_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise LogValueError(
            f"{_name(desc)}: value_range=(lo, hi) needs finite lo < hi, got {value_range!r}"
        )
    return lo, hi


def _pixels_to_uint8(
    x: torch.Tensor, desc: str, value_range: tuple[float, float] | None
) -> torch.Tensor:
    """Apply the scaling rule (module docstring) to a whole batch; returns a uint8 tensor."""
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool:
        return x.to(torch.uint8) * 255
    if x.is_complex():
        raise LogTypeError(f"{_name(desc)}: pixels are complex ({x.dtype})")
    if not x.is_floating_point():  # other integer types
        if value_range is None:
            lo_v, hi_v = int(x.min()), int(x.max())
            if lo_v < 0 or hi_v > 255:
                raise LogValueError(
                    f"{_name(desc)}: integer pixels ({x.dtype}) span [{lo_v}, {hi_v}], outside "
                    "[0, 255]; pass value_range=(lo, hi) or convert to uint8"
                )
            return x.to(torch.uint8)
        x = x.to(torch.float64)
    work = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    finite = torch.isfinite(work)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        has_nan = bool(torch.isnan(work).any())
        raise LogValueError(
            f"{_name(desc)}: {bad} pixel value(s) are {'NaN' if has_nan else 'infinite'}"
        )
    if value_range is not None:
        lo, hi = value_range
        scaled = (work - lo) / (hi - lo) * 255.0
    else:
        f_lo, f_hi = float(work.min()), float(work.max())
        if f_lo >= 0.0 and f_hi <= 1.0:
            scaled = work * 255.0
        elif f_lo >= -1.0 and f_hi <= 1.0:
            scaled = (work + 1.0) * 127.5
        else:
            raise LogValueError(
                f"{_name(desc)}: float pixels span [{f_lo:.4g}, {f_hi:.4g}], outside [0, 1] "
                "and [-1, 1]; pass value_range=(lo, hi) or convert to uint8"
            )
    return scaled.round().clamp_(0, 255).to(torch.uint8)


def _check_channels(c: int, desc: str, shape: tuple[int, ...], layout: str) -> None:
    if c not in (1, 3, 4):
        raise LogValueError(
            f"{_name(desc)}: got shape {shape} read as {layout}, which has {c} channels; "
            "expected 1, 3 or 4 (torch tensors are channel-first, numpy arrays channel-last)"
        )


def _captions(caption: Any, captions: Any, n: int, desc: str) -> list[str] | None:
    if caption is not None and captions is not None:
        raise LogTypeError(f"{_name(desc)}: pass caption= or captions=, not both")
    value = caption if caption is not None else captions
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * n
    if not isinstance(value, Sequence):
        raise LogTypeError(
            f"{_name(desc)}: caption must be a string or a list of strings, got "
            f"{type(value).__name__}"
        )
    if len(value) != n:
        raise LogValueError(f"{_name(desc)}: {len(value)} captions for {n} item(s)")
    return [str(c) for c in value]


def _pil_to_array(img: Any) -> np.ndarray:
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr.copy()


def _is_pil(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("PIL.") and hasattr(x, "getbands")


def _is_wandb_image(x: Any) -> bool:
    return type(x).__module__.startswith("wandb") and type(x).__name__ == "Image"


def _frames_batch(
    x: torch.Tensor, desc: str, *, batched: bool, channel_first: bool, kind: str
) -> torch.Tensor:
    """Checks dims/channels and returns a batch laid out (B, H, W, C) or (B, T, H, W, C)."""
    if kind == "images":
        want = 4 if batched else 3
        layout = ("BCHW" if batched else "CHW") if channel_first else ("BHWC" if batched else "HWC")
    else:
        want = 5 if batched else 4
        layout = (
            ("BCTHW" if batched else "CTHW") if channel_first else ("BTHWC" if batched else "THWC")
        )
    shape = tuple(x.shape)
    if x.ndim != want:
        raise LogValueError(f"{_name(desc)}: expected {layout}, got shape {shape}")
    if not batched:
        x = x.unsqueeze(0)
    if channel_first:
        c = x.shape[1]
        _check_channels(c, desc, shape, layout)
        x = x.permute(0, 2, 3, 1) if kind == "images" else x.permute(0, 2, 3, 4, 1)
    else:
        _check_channels(x.shape[-1], desc, shape, layout)
    if x.shape[0] == 0:
        raise LogValueError(f"{_name(desc)}: the batch is empty (shape {shape})")
    if any(int(s) == 0 for s in x.shape[1:]):
        raise LogValueError(f"{_name(desc)}: a dimension is zero (shape {shape})")
    return x


def _to_uint8_numpy(x: torch.Tensor, src: torch.Tensor) -> np.ndarray:
    """A host uint8 array that never shares memory with the caller's tensor or array."""
    out = x.contiguous().cpu()
    shared = (
        src.device.type == "cpu"
        and out.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()
    )
    return (out.clone() if shared else out).numpy()


def _image_batch(
    images: Any, desc: str, value_range: tuple[float, float] | None
) -> list[np.ndarray]:
    """(B, H, W, C) uint8 images from any accepted input layout."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise LogValueError(f"{_name(desc)}: the batch is empty (an empty list)")
        parts = []
        for i, img in enumerate(images):
            try:
                parts.append(_single_image_tensor(img, desc))
            except (LogValueError, LogTypeError) as exc:
                raise type(exc)(f"{exc} (item {i})") from None
        shapes = {tuple(p.shape) for p in parts}
        dtypes = {p.dtype for p in parts}
        if len(dtypes) > 1:
            raise LogTypeError(f"{_name(desc)}: list items mix dtypes {sorted(map(str, dtypes))}")
        if len(shapes) == 1:
            batch = _pixels_to_uint8(torch.stack(parts), desc, value_range)
            return list(_to_uint8_numpy(batch, parts[0]))
        # different sizes: decide the float rule over all of them, then convert one by one
        flat = torch.cat([p.reshape(-1) for p in parts])
        if flat.is_floating_point() and value_range is None:
            _pixels_to_uint8(flat, desc, None)  # validates NaN / range on the whole batch
            lo_v = float(flat.min())
            value_range = (0.0, 1.0) if lo_v >= 0.0 else (-1.0, 1.0)
        return [_to_uint8_numpy(_pixels_to_uint8(p, desc, value_range), p) for p in parts]
    if _is_pil(images) or _is_wandb_image(images):
        return [_pil_or_wandb_to_array(images, desc)]
    x = _as_tensor(images, desc, "images")
    channel_first = _is_tensor(images)
    if x.ndim == 2:  # a single (H, W) grayscale image
        x = x.unsqueeze(0) if channel_first else x.unsqueeze(-1)
    batched = x.ndim == 4
    if x.ndim not in (3, 4):
        layout = "(B, C, H, W) or (C, H, W)" if channel_first else "(B, H, W, C) or (H, W, C)"
        raise LogValueError(f"{_name(desc)}: expected {layout}, got shape {tuple(x.shape)}")
    b = _frames_batch(x, desc, batched=batched, channel_first=channel_first, kind="images")
    return list(_to_uint8_numpy(_pixels_to_uint8(b, desc, value_range), x))


def _single_image_tensor(img: Any, desc: str) -> torch.Tensor:
    """One image from a list, as an (H, W, C) tensor of its original dtype."""
    if _is_pil(img) or _is_wandb_image(img):
        return torch.from_numpy(_pil_or_wandb_to_array(img, desc))
    x = _as_tensor(img, desc, "image")
    channel_first = _is_tensor(img)
    if x.ndim == 2:
        x = x.unsqueeze(0) if channel_first else x.unsqueeze(-1)
    if x.ndim != 3:
        layout = "(C, H, W)" if channel_first else "(H, W, C)"
        raise LogValueError(
            f"{_name(desc)}: each list item must be {layout}, got shape {tuple(img.shape)}"
        )
    return _frames_batch(x, desc, batched=False, channel_first=channel_first, kind="images")[0]


def _pil_or_wandb_to_array(obj: Any, desc: str) -> np.ndarray:
    if _is_wandb_image(obj):
        pil = getattr(obj, "image", None)
        if pil is None:
            raise LogValueError(f"{_name(desc)}: this wandb.Image holds no pixels")
        obj = pil
    return _pil_to_array(obj)


def to_images(
    images: Any,
    caption: str | Sequence[str] | None = None,
    *,
    desc: str,
    value_range: tuple[float, float] | None = None,
    captions: str | Sequence[str] | None = None,
) -> Images:
    """Validate and convert images to uint8 ``(H, W, C)`` arrays; no communication.

    Accepts a ``(B, C, H, W)`` or ``(C, H, W)`` tensor (channel-first), a ``(B, H, W, C)`` or
    ``(H, W, C)`` numpy array (channel-last), an ``(H, W)`` grayscale image, a list of those, or
    PIL / ``wandb.Image`` objects. C must be 1, 3 or 4. Floats follow the scaling rule of the
    module docstring. Errors name ``desc``.
    """
    desc = _check_desc(desc)
    vr = _check_value_range(value_range, desc)
    arrays = _image_batch(images, desc, vr)
    return Images(images=arrays, captions=_captions(caption, captions, len(arrays), desc))


def _check_fps_format(fps: Any, format: Any, desc: str) -> tuple[float, Literal["gif", "mp4"]]:
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float, np.integer, np.floating))
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise LogValueError(f"{_name(desc)}: fps must be a positive number, got {fps!r}")
    if format not in ("gif", "mp4"):
        raise LogValueError(f"{_name(desc)}: format must be 'gif' or 'mp4', got {format!r}")
    return float(fps), format


def to_videos(
    videos: Any,
    caption: str | Sequence[str] | None = None,
    *,
    desc: str,
    fps: float = 4,
    format: Literal["gif", "mp4"] = "gif",
    value_range: tuple[float, float] | None = None,
    captions: str | Sequence[str] | None = None,
) -> Videos:
    """Validate and convert videos to uint8 ``(T, H, W, C)`` frames; no communication.

    Accepts a ``(B, C, T, H, W)`` or ``(C, T, H, W)`` tensor, a ``(B, T, H, W, C)`` or
    ``(T, H, W, C)`` numpy array, or a list of single videos of one shape. Floats follow the
    scaling rule of the module docstring, decided over the whole batch.
    """
    desc = _check_desc(desc)
    vr = _check_value_range(value_range, desc)
    fps_f, fmt = _check_fps_format(fps, format, desc)
    if isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            raise LogValueError(f"{_name(desc)}: the batch is empty (an empty list)")
        parts = []
        for i, v in enumerate(videos):
            t = _as_tensor(v, desc, f"video {i}")
            cf = _is_tensor(v)
            try:
                parts.append(
                    _frames_batch(t, desc, batched=False, channel_first=cf, kind="videos")[0]
                )
            except LogValueError as exc:
                raise LogValueError(f"{exc} (item {i})") from None
        if len({tuple(p.shape) for p in parts}) > 1:
            raise LogValueError(
                f"{_name(desc)}: videos in a list must share one shape, got "
                f"{sorted({tuple(p.shape) for p in parts})}"
            )
        if len({p.dtype for p in parts}) > 1:
            raise LogTypeError(f"{_name(desc)}: videos in a list mix dtypes")
        batch_src = parts[0]
        batch = torch.stack(parts)
    else:
        x = _as_tensor(videos, desc, "videos")
        cf = _is_tensor(videos)
        batched = x.ndim == 5
        if x.ndim not in (4, 5):
            layout = "(B, C, T, H, W) or (C, T, H, W)" if cf else "(B, T, H, W, C) or (T, H, W, C)"
            raise LogValueError(f"{_name(desc)}: expected {layout}, got shape {tuple(x.shape)}")
        batch = _frames_batch(x, desc, batched=batched, channel_first=cf, kind="videos")
        batch_src = x
    frames = _to_uint8_numpy(_pixels_to_uint8(batch, desc, vr), batch_src)
    caps: list[str | None] = list(_captions(caption, captions, len(frames), desc) or [])
    caps = caps or [None] * len(frames)
    return Videos(
        videos=[
            Video(frames=f, fps=fps_f, format=fmt, caption=c)
            for f, c in zip(frames, caps, strict=True)
        ]
    )


def _close_figure(fig: Any) -> None:
    """Drop a figure from pyplot's registry (if pyplot is in use) so long runs don't leak."""
    if fig is not None and not hasattr(fig, "savefig"):
        fig = getattr(fig, "figure", None)  # an Axes
    if fig is None or not hasattr(fig, "savefig"):
        return  # never plt.close(None): that would close the user's current figure
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            plt.close(fig)
        except Exception:
            pass


def _as_figure(figure: Any, desc: str) -> Any:
    fig = figure
    if not hasattr(fig, "savefig") and hasattr(fig, "figure"):  # an Axes
        fig = fig.figure
    if not (hasattr(fig, "savefig") and hasattr(fig, "get_size_inches")):
        raise LogTypeError(
            f"{_name(desc)}: expected a matplotlib Figure (or Axes), got {type(figure).__name__}"
        )
    return fig


def figure_to_images(figure: Any, *, desc: str, caption: str | None = None) -> Images:
    """Render a matplotlib figure (or Axes) with Agg into one RGB(A) image, then close it.

    Rendering happens here, on the caller's thread (matplotlib figures are not thread-safe);
    the PNG encoding happens later in the sinks. No plotly needed.
    """
    desc = _check_desc(desc)
    fig = _as_figure(figure, desc)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        _close_figure(fig)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.array(canvas.buffer_rgba(), dtype=np.uint8, copy=True)
    finally:
        _close_figure(fig)
    image = rgba if bool((rgba[..., 3] < 255).any()) else np.ascontiguousarray(rgba[..., :3])
    return Images(images=[image], captions=None if caption is None else [str(caption)])


def _table_cell(cell: Any, desc: str, row: int, col: str) -> TableCell:
    where = f"{_name(desc)}: row {row}, column {col!r}"
    if cell is None or isinstance(cell, (bool, int, float, str)):
        return cell
    if isinstance(cell, np.generic):
        return cell.item()  # type: ignore[no-any-return]
    if _is_pil(cell) or _is_wandb_image(cell):
        return _pil_or_wandb_to_array(cell, desc)
    if isinstance(cell, (torch.Tensor, np.ndarray)):
        if cell.ndim == 0 or (cell.ndim == 1 and cell.shape[0] == 1):
            return cell.reshape(()).item()  # type: ignore[no-any-return]
        if cell.ndim in (2, 3):
            try:
                return _image_batch(cell, desc, None)[0]
            except (LogValueError, LogTypeError) as exc:
                raise type(exc)(f"{exc} ({where[len(_name(desc)) + 2 :]})") from None
        raise LogValueError(
            f"{where}: an array cell must be an image (C, H, W tensor / H, W, C array) or a "
            f"single number, got shape {tuple(cell.shape)}"
        )
    raise LogTypeError(
        f"{where}: cells may be numbers, strings, None or images, got {type(cell).__name__}"
    )


def to_table(columns: Sequence[str], data: Sequence[Sequence[Any]], *, desc: str) -> Table:
    """Validate a table: string column names, rows of equal length, convertible cells.

    Cells may be numbers, strings, None, image tensors (CHW) or arrays (HWC), PIL images or
    ``wandb.Image`` objects (converted to arrays; no wandb run needed).
    """
    desc = _check_desc(desc)
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise LogTypeError(f"{_name(desc)}: columns must be a list of strings")
    cols = list(columns)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise LogTypeError(f"{_name(desc)}: columns must be a non-empty list of strings")
    if len(set(cols)) != len(cols):
        raise LogValueError(f"{_name(desc)}: duplicate column names in {cols}")
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise LogTypeError(f"{_name(desc)}: data must be a list of rows")
    rows: list[list[TableCell]] = []
    for i, row in enumerate(data):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise LogTypeError(f"{_name(desc)}: row {i} is a {type(row).__name__}, not a list")
        if len(row) != len(cols):
            raise LogValueError(
                f"{_name(desc)}: row {i} has {len(row)} cells for {len(cols)} columns"
            )
        rows.append([_table_cell(c, desc, i, name) for c, name in zip(row, cols, strict=True)])
    return Table(columns=cols, rows=rows)


def _histogram_values(values: Any, desc: str) -> torch.Tensor:
    """Values as a flat float32/float64 tensor on their device (half types widen to float32)."""
    if isinstance(values, (list, tuple)) or np.isscalar(values):
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise LogTypeError(f"{_name(desc)}: histogram values must be numbers") from None
    x = _as_tensor(values, desc, "histogram values")
    if x.is_complex():
        raise LogTypeError(f"{_name(desc)}: histogram values are complex ({x.dtype})")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    elif not x.is_floating_point():
        x = x.to(torch.float64)
    return x.reshape(-1)


@dataclass
class _LocalStats:
    finite: torch.Tensor
    n_finite: int
    n_nonfinite: int
    lo: float
    hi: float
    dtype_bits: int


def _local_stats(x: torch.Tensor) -> _LocalStats:
    mask = torch.isfinite(x)
    n_finite = int(mask.sum())
    finite = x if n_finite == x.numel() else x[mask]
    if n_finite:
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = math.inf, -math.inf
    bits = 32 if x.dtype == torch.float32 else 64
    return _LocalStats(finite, n_finite, x.numel() - n_finite, lo, hi, bits)


def _edges(lo: float, hi: float, bins: int, dtype_bits: int, desc: str = "histogram") -> np.ndarray:
    """The bin edges numpy.histogram gives an array of this dtype with min lo and max hi."""
    dt = np.float32 if dtype_bits == 32 else np.float64
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0  # numpy's range for an empty array
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.histogram_bin_edges(np.empty(0, dtype=dt), bins=bins, range=(dt(lo), dt(hi)))
    except ValueError:
        pass
    # float32 cannot hold that many distinct edges in so narrow a range (a large constant):
    # numpy gives up; distlog bins in float64 instead
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.histogram_bin_edges(np.empty(0), bins=bins, range=(lo, hi))
    except ValueError:
        raise LogValueError(
            f"{_name(desc)}: cannot make {bins} finite bins over [{lo:.6g}, {hi:.6g}] (the "
            "range overflows float64)"
        ) from None


def _bin_counts(
    finite: torch.Tensor, edges: np.ndarray, *, on_device: bool | None = None
) -> torch.Tensor:
    """numpy.histogram's counts (last bin closed) for values known to lie within the edges.

    Host tensors go through numpy's equal-width fast path; device tensors (or ``on_device``)
    are binned by binary search against the same edges, so they never leave the device.
    """
    bins = len(edges) - 1
    if finite.numel() == 0:
        return torch.zeros(bins, dtype=torch.int64, device=finite.device)
    if on_device is None:
        on_device = finite.device.type != "cpu"
    if edges.dtype == np.float64 and finite.dtype != torch.float64:
        finite = finite.to(torch.float64)  # the float64 fallback of _edges
    if not on_device:
        arr = finite.numpy()
        counts, _ = np.histogram(
            arr, bins=bins, range=(edges.dtype.type(edges[0]), edges.dtype.type(edges[-1]))
        )
        return torch.from_numpy(counts.astype(np.int64))
    e = torch.from_numpy(edges).to(device=finite.device, dtype=finite.dtype)
    idx = torch.bucketize(finite, e, right=True) - 1
    idx.clamp_(0, bins - 1)
    return torch.bincount(idx, minlength=bins)


def _check_bins(bins: Any, desc: str) -> int:
    if (
        isinstance(bins, bool)
        or not isinstance(bins, (int, np.integer))
        or not 1 <= bins <= MAX_BINS
    ):
        raise LogValueError(
            f"{_name(desc)}: bins must be an integer in [1, {MAX_BINS}], got {bins!r}"
        )
    return int(bins)


def histogram(values: Any, *, desc: str, bins: int = 64) -> Histogram:
    """The local histogram of ``values`` (numpy.histogram's bins), non-finite values left out."""
    desc = _check_desc(desc)
    bins = _check_bins(bins, desc)
    st = _local_stats(_histogram_values(values, desc))
    edges = _edges(st.lo, st.hi, bins, st.dtype_bits, desc)
    counts = _bin_counts(st.finite, edges).cpu().numpy()
    return Histogram(counts=counts, edges=edges, nonfinite=st.n_nonfinite)


# ---------------------------------------------------------------------------------------------
# the gathering protocol
# ---------------------------------------------------------------------------------------------

_MAGIC = 0x64697374_6C6F67  # "distlog"
_VERSION = 1
_HEADER_FIELDS = 16
_DESC_BYTES = 48
_HEADER_LEN = _HEADER_FIELDS + _DESC_BYTES
_KIND_CODES = {"images": 1, "videos": 2, "plot": 3, "histogram": 4, "table": 5}
_KIND_NAMES = {v: k for k, v in _KIND_CODES.items()}
_IDLE, _OK, _ERROR = 0, 1, 2

# header fields
_H_MAGIC, _H_VERSION, _H_KIND, _H_FP, _H_COUNTER, _H_STATUS, _H_ITEMS, _H_BYTES, _H_AUX = range(9)
_H_LO, _H_HI, _H_FINITE, _H_NONFINITE, _H_DTYPE = 9, 10, 11, 12, 13

# gathering calls made so far per process group (weak: a group that is destroyed and another
# created at the same address must not inherit the count on some ranks only)
_CALL_COUNTERS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 2


def _float_bits(v: float) -> int:
    return int(torch.tensor([v], dtype=torch.float64).view(torch.int64).item())


def _bits_float(b: int) -> float:
    return float(torch.tensor([b], dtype=torch.int64).view(torch.float64).item())


def _make_header(kind: str, desc: str, fingerprint: int, counter: int) -> torch.Tensor:
    h = torch.zeros(_HEADER_LEN, dtype=torch.int64)
    h[_H_MAGIC], h[_H_VERSION], h[_H_KIND] = _MAGIC, _VERSION, _KIND_CODES[kind]
    h[_H_FP], h[_H_COUNTER] = fingerprint, counter
    raw = desc.encode()[:_DESC_BYTES]
    h[_HEADER_FIELDS : _HEADER_FIELDS + len(raw)] = torch.tensor(list(raw), dtype=torch.int64)
    return h


def _header_desc(h: torch.Tensor) -> str:
    raw = bytes(int(b) for b in h[_HEADER_FIELDS:].tolist() if 0 < int(b) < 256)
    return raw.decode(errors="replace")


def _wait(work: Any, timeout: float | None, desc: str, what: str) -> None:
    if work is None:
        return
    if timeout is None:
        work.wait()
        return
    try:
        work.wait(timeout=timedelta(seconds=timeout))
    except RuntimeError as exc:
        if "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
            raise RankDivergenceError(
                f"{_name(desc)}: {what} did not complete within {timeout:g}s. A gathering media "
                "call (ranks other than 0) must be made by every rank of the logger's group, in "
                "the same order; some rank did not make it"
            ) from exc
        raise


def _next_counter(group: Any) -> int:
    """This process's count of gathering calls on ``group`` (None: the default group)."""
    key = group if group is not None else dist.distributed_c10d._get_default_group()
    n = _CALL_COUNTERS.get(key, 0) + 1
    _CALL_COUNTERS[key] = n
    return n


def _exchange_headers(
    header: torch.Tensor,
    *,
    group: Any,
    group_size: int,
    comm_device: torch.device,
    desc: str,
    timeout: float | None,
) -> list[torch.Tensor]:
    """all_gather the fixed-size headers and check that every rank is in the same call."""
    if group_size == 1:
        return [header]
    local = header.to(comm_device)
    out = [torch.empty_like(local) for _ in range(group_size)]
    work = dist.all_gather(out, local, group=group, async_op=True)
    _wait(work, timeout, desc, "the media header exchange")
    headers = [h.cpu() for h in out]
    mine = header
    bad = [
        i
        for i, h in enumerate(headers)
        if int(h[_H_MAGIC]) != _MAGIC
        or int(h[_H_FP]) != int(mine[_H_FP])
        or int(h[_H_COUNTER]) != int(mine[_H_COUNTER])
    ]
    if bad:
        seen = []
        for i, h in enumerate(headers):
            if int(h[_H_MAGIC]) != _MAGIC:
                seen.append(f"group rank {i}: not a distlog media call")
            else:
                kind = _KIND_NAMES.get(int(h[_H_KIND]), "?")
                seen.append(
                    f"group rank {i}: {kind} {_header_desc(h)!r} (media call #{int(h[_H_COUNTER])})"
                )
        raise RankDivergenceError(
            f"{_name(desc)}: ranks are in different media calls; every rank of the group must "
            "make the same gathering call (same kind, desc and ranks=) in the same order. "
            + "; ".join(seen)
        )
    return headers


def _fair_share(sizes: Sequence[int], cap: int) -> list[int]:
    """Split ``cap`` among ranks wanting ``sizes``: small requests in full, the rest evenly."""
    alloc = [0] * len(sizes)
    remaining = cap
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(order):
        share = remaining // (len(sizes) - k)
        alloc[i] = min(sizes[i], share)
        remaining -= alloc[i]
    return alloc


@dataclass
class _Unit:
    """One item that travels whole: an image, a video, a table row. JSON meta + arrays."""

    meta: dict[str, Any]
    arrays: list[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays) + len(json.dumps(self.meta))


@dataclass
class _Parcel:
    """What one rank contributes: its units plus call-level metadata (table columns)."""

    units: list[_Unit]
    extra: dict[str, Any] = field(default_factory=dict)
    aux: int = 0  # a hash every contributing rank must agree on (table columns)


def _pack(parcel: _Parcel, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes [meta_len, data_len], payload uint8) for the first ``kept`` units."""
    units = parcel.units[:kept]
    meta = {
        "extra": parcel.extra,
        "units": [{"meta": u.meta, "arrays": [list(a.shape) for a in u.arrays]} for u in units],
    }
    meta_bytes = json.dumps(meta).encode()
    chunks = [np.frombuffer(meta_bytes, dtype=np.uint8)]
    for u in units:
        for a in u.arrays:
            chunks.append(np.ascontiguousarray(a, dtype=np.uint8).reshape(-1))
    payload = np.concatenate(chunks) if chunks else np.empty(0, np.uint8)
    sizes = np.array([len(meta_bytes), payload.size - len(meta_bytes)], dtype=np.int64)
    return sizes, payload


def _unpack(payload: np.ndarray, meta_len: int, src: int, desc: str) -> _Parcel:
    """Decode a received payload: JSON metadata and raw uint8 arrays, every size checked."""

    def fail(why: str) -> RankDivergenceError:
        return RankDivergenceError(f"{_name(desc)}: malformed media payload from rank {src}: {why}")

    try:
        meta = json.loads(payload[:meta_len].tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("units"), list):
        raise fail("metadata has no unit list")
    offset = meta_len
    units = []
    for u in meta["units"]:
        if not isinstance(u, dict) or not isinstance(u.get("arrays"), list):
            raise fail("a unit has no array list")
        arrays = []
        for shape in u["arrays"]:
            if (
                not isinstance(shape, list)
                or not 3 <= len(shape) <= 4
                or not all(isinstance(s, int) and s > 0 for s in shape)
                or shape[-1] not in (1, 3, 4)
            ):
                raise fail(f"bad array shape {shape!r}")
            n = int(np.prod(shape))
            if offset + n > payload.size:
                raise fail("payload shorter than its metadata says")
            arrays.append(payload[offset : offset + n].reshape(shape).copy())
            offset += n
        units.append(_Unit(meta=u.get("meta") or {}, arrays=arrays))
    if offset != payload.size:
        raise fail("payload longer than its metadata says")
    extra = meta.get("extra")
    return _Parcel(units=units, extra=extra if isinstance(extra, dict) else {})


@dataclass
class _Gathered:
    """On rank 0: each contributing rank's parcel, in rank order, with what was kept."""

    parcels: list[tuple[int, _Parcel]]
    dropped: dict[int, tuple[int, int]]  # rank -> (kept, total)


def _comm(world: World, group: Any) -> tuple[Any, torch.device]:
    """The group to gather over and where its tensors live."""
    if group is None:
        return world.group, world.comm_device
    return group, _group_device(group)


def _normalize_ranks(world: World, ranks: Any, desc: str) -> tuple[int, ...] | None:
    """None for the default (rank 0, no communication); else the chosen global ranks."""
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool) and int(ranks) == 0:
        return None
    if isinstance(ranks, str):
        if ranks != "all":
            raise LogValueError(
                f"{_name(desc)}: ranks must be 0, 'all' or a list of ranks, got {ranks!r}"
            )
        return tuple(world.group_ranks)
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        chosen: list[int] = [int(ranks)]
    elif isinstance(ranks, Sequence) and all(
        isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in ranks
    ):
        chosen = sorted({int(r) for r in ranks})
    else:
        raise LogTypeError(
            f"{_name(desc)}: ranks must be 0, 'all' or a list of ranks, got {ranks!r}"
        )
    if not chosen:
        raise LogValueError(f"{_name(desc)}: ranks is an empty list")
    outside = [r for r in chosen if r not in world.group_ranks]
    if outside:
        raise LogValueError(
            f"{_name(desc)}: ranks {outside} are not in the logger's group (global ranks "
            f"{list(world.group_ranks)})"
        )
    return tuple(chosen)


def _gather_parcels(
    world: World,
    kind: str,
    desc: str,
    chosen: tuple[int, ...],
    prepare: Callable[[], _Parcel],
    *,
    max_bytes: int,
    max_items: int | None,
    timeout: float | None,
    group: Any = None,
) -> _Gathered | None:
    """The gathering call: header exchange, then chosen ranks send their parcels to rank 0."""
    if not world.writer_in_group:
        return None  # nobody in this group writes; every member returns here alike
    distributed = world.group_size > 1 and world.backend is not None
    pg, dev = _comm(world, group)
    fingerprint = _stable_hash(f"{kind}\0{desc}\0{','.join(map(str, chosen))}")
    counter = _next_counter(pg) if distributed else 0
    header = _make_header(kind, desc, fingerprint, counter)

    parcel: _Parcel | None = None
    error: BaseException | None = None
    if world.rank in chosen:
        try:
            parcel = prepare()
        except Exception as exc:  # take part in the header exchange, then raise it
            error = exc
    if error is not None:
        header[_H_STATUS] = _ERROR
    elif parcel is not None:
        header[_H_STATUS] = _OK
        header[_H_ITEMS] = len(parcel.units)
        header[_H_BYTES] = sum(u.nbytes for u in parcel.units)
        header[_H_AUX] = parcel.aux

    headers = _exchange_headers(
        header,
        group=pg,
        group_size=world.group_size if distributed else 1,
        comm_device=dev,
        desc=desc,
        timeout=timeout,
    )
    ranks_of = list(world.group_ranks) if distributed else [world.rank]
    status = {ranks_of[i]: int(h[_H_STATUS]) for i, h in enumerate(headers)}
    if error is not None:
        raise error
    failed = sorted(r for r, s in status.items() if s == _ERROR)
    if failed:
        if world.is_global_zero:
            warnings.warn(
                f"{_name(desc)}: the input on rank(s) {failed} was rejected (the error is raised "
                "there); nothing is written for this call",
                MediaWarning,
                stacklevel=4,
            )
        return None
    ok = [(ranks_of[i], h) for i, h in enumerate(headers) if int(h[_H_STATUS]) == _OK]
    if len({int(h[_H_AUX]) for _, h in ok}) > 1:
        raise LogValueError(
            f"{_name(desc)}: ranks {[r for r, _ in ok]} disagree on the table columns; every "
            "contributing rank must log the same columns"
        )

    # every rank computes the same allocation from the headers
    items = [int(h[_H_ITEMS]) for _, h in ok]
    item_alloc = _fair_share(items, max_items) if max_items is not None else items
    byte_alloc = _fair_share([int(h[_H_BYTES]) for _, h in ok], max_bytes)
    alloc = {r: (item_alloc[k], byte_alloc[k]) for k, (r, _) in enumerate(ok)}

    def kept_count(p: _Parcel, rank: int) -> int:
        n_max, b_max = alloc[rank]
        used = kept = 0
        for u in p.units[:n_max]:
            if used + u.nbytes > b_max:
                break
            used += u.nbytes
            kept += 1
        return kept

    senders = [r for r, h in ok if r != 0 and int(h[_H_ITEMS]) > 0]
    if world.rank != 0:
        if parcel is not None and world.rank in senders:
            sizes, payload = _pack(parcel, kept_count(parcel, world.rank))
            _wait(
                dist.isend(torch.from_numpy(sizes).to(dev), dst=0, group=pg),
                timeout,
                desc,
                "sending media sizes to rank 0",
            )
            _wait(
                dist.isend(torch.from_numpy(payload).to(dev), dst=0, group=pg),
                timeout,
                desc,
                "sending media to rank 0",
            )
        return None

    parcels: list[tuple[int, _Parcel]] = []
    dropped: dict[int, tuple[int, int]] = {}
    for r, h in ok:
        total = int(h[_H_ITEMS])
        if r == 0:
            assert parcel is not None
            kept = kept_count(parcel, 0)
            parcels.append((0, _Parcel(units=parcel.units[:kept], extra=parcel.extra)))
        elif total == 0:
            parcels.append((r, _Parcel(units=[])))
            kept = 0
        else:
            sizes_t = torch.empty(2, dtype=torch.int64, device=dev)
            _wait(
                dist.irecv(sizes_t, src=r, group=pg),
                timeout,
                desc,
                f"receiving media sizes from rank {r}",
            )
            meta_len, data_len = (int(v) for v in sizes_t.cpu().tolist())
            if meta_len < 0 or data_len < 0 or data_len > int(h[_H_BYTES]):
                raise RankDivergenceError(
                    f"{_name(desc)}: rank {r} announced an impossible payload ({meta_len}, {data_len})"
                )
            buf = torch.empty(meta_len + data_len, dtype=torch.uint8, device=dev)
            _wait(dist.irecv(buf, src=r, group=pg), timeout, desc, f"receiving media from rank {r}")
            got = _unpack(buf.cpu().numpy(), meta_len, r, desc)
            kept = len(got.units)
            parcels.append((r, got))
        if kept < total:
            dropped[r] = (kept, total)
    return _Gathered(parcels=parcels, dropped=dropped)


def _warn_dropped(
    desc: str,
    noun: str,
    dropped: dict[int, tuple[int, int]],
    max_bytes: int,
    max_items: int | None = None,
) -> None:
    if not dropped:
        return
    detail = ", ".join(f"{k} of {n} from rank {r}" for r, (k, n) in sorted(dropped.items()))
    caps = f"{max_bytes} bytes" + (f" / {max_items} {noun}" if max_items is not None else "")
    warnings.warn(
        f"{_name(desc)}: the per-call cap ({caps}) was reached; kept {detail}. Raise "
        "max_bytes=/max_rows= or log fewer/smaller items",
        MediaWarning,
        stacklevel=4,
    )


def _tag(rank: int, caption: str | None) -> str:
    return f"rank {rank}" if caption is None else f"rank {rank}: {caption}"


def _check_cap(value: Any, name: str, desc: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise LogValueError(f"{_name(desc)}: {name} must be a non-negative integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# the entries the Logger calls: each returns the item on rank 0 and None elsewhere
# ---------------------------------------------------------------------------------------------


def _images_parcel(item: Images) -> _Parcel:
    caps: list[str | None] = [None] * len(item.images)
    if item.captions is not None:
        caps = list(item.captions)
    return _Parcel(
        units=[_Unit({"caption": c}, [a]) for a, c in zip(item.images, caps, strict=True)]
    )


def _images_from(gathered: _Gathered) -> Images:
    images, captions = [], []
    for r, p in gathered.parcels:
        for u in p.units:
            images.append(u.arrays[0])
            cap = u.meta.get("caption")
            captions.append(_tag(r, cap if isinstance(cap, str) else None))
    return Images(images=images, captions=captions)


def _collect_image_like(
    world: World,
    kind: str,
    desc: str,
    ranks: Any,
    convert: Callable[[], Images],
    max_bytes: int,
    timeout: float | None,
    group: Any,
) -> Images | None:
    chosen = _normalize_ranks(world, ranks, desc)
    if chosen is None:
        return convert() if world.is_global_zero else None
    gathered = _gather_parcels(
        world,
        kind,
        desc,
        chosen,
        lambda: _images_parcel(convert()),
        max_bytes=max_bytes,
        max_items=None,
        timeout=timeout,
        group=group,
    )
    if gathered is None:
        return None
    _warn_dropped(desc, "images", gathered.dropped, max_bytes)
    result = _images_from(gathered)
    if not result.images:
        return None
    return result


def collect_images(
    world: World,
    images: Any,
    caption: str | Sequence[str] | None = None,
    *,
    desc: str,
    ranks: RanksArg = 0,
    value_range: tuple[float, float] | None = None,
    captions: str | Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Images | None:
    """Images for the writer: rank 0's (default) or gathered from ``ranks`` (see module doc).

    Returns the item on global rank 0 and None elsewhere. In a gathering call every rank of the
    group must call; ``timeout`` (seconds) turns a missing rank into an error instead of a hang.
    ``group`` may name another process group with the same members as ``world.group`` to
    gather over (the Logger passes its gloo control group, so pixels stay on the host).
    """
    desc = _check_desc(desc)
    max_bytes = _check_cap(max_bytes, "max_bytes", desc)
    return _collect_image_like(
        world,
        "images",
        desc,
        ranks,
        lambda: to_images(images, caption, desc=desc, value_range=value_range, captions=captions),
        max_bytes,
        timeout,
        group,
    )


def collect_plot(
    world: World,
    figure: Any,
    *,
    desc: str,
    caption: str | None = None,
    ranks: RanksArg = 0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Images | None:
    """A matplotlib figure rendered on the ranks that contribute; closed on every rank."""
    desc = _check_desc(desc)
    try:
        max_bytes = _check_cap(max_bytes, "max_bytes", desc)
        chosen = _normalize_ranks(world, ranks, desc)
    except Exception:
        _close_figure(figure)
        raise
    if chosen is None and not world.is_global_zero:
        _close_figure(figure)
        return None
    try:
        return _collect_image_like(
            world,
            "plot",
            desc,
            ranks,
            lambda: figure_to_images(figure, desc=desc, caption=caption),
            max_bytes,
            timeout,
            group,
        )
    finally:
        _close_figure(figure)


def collect_videos(
    world: World,
    videos: Any,
    caption: str | Sequence[str] | None = None,
    *,
    desc: str,
    fps: float = 4,
    format: Literal["gif", "mp4"] = "gif",
    ranks: RanksArg = 0,
    value_range: tuple[float, float] | None = None,
    captions: str | Sequence[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Videos | None:
    """Videos for the writer: rank 0's (default) or gathered from ``ranks``."""
    desc = _check_desc(desc)
    max_bytes = _check_cap(max_bytes, "max_bytes", desc)

    def convert() -> Videos:
        return to_videos(
            videos,
            caption,
            desc=desc,
            fps=fps,
            format=format,
            value_range=value_range,
            captions=captions,
        )

    chosen = _normalize_ranks(world, ranks, desc)
    if chosen is None:
        return convert() if world.is_global_zero else None

    def prepare() -> _Parcel:
        return _Parcel(
            units=[
                _Unit({"caption": v.caption, "fps": v.fps, "format": v.format}, [v.frames])
                for v in convert().videos
            ]
        )

    gathered = _gather_parcels(
        world,
        "videos",
        desc,
        chosen,
        prepare,
        max_bytes=max_bytes,
        max_items=None,
        timeout=timeout,
        group=group,
    )
    if gathered is None:
        return None
    _warn_dropped(desc, "videos", gathered.dropped, max_bytes)
    out = []
    for r, p in gathered.parcels:
        for u in p.units:
            cap = u.meta.get("caption")
            fps_v = u.meta.get("fps")
            fmt = u.meta.get("format")
            if u.arrays[0].ndim != 4:
                raise RankDivergenceError(f"{_name(desc)}: rank {r} sent a video that is not THWC")
            out.append(
                Video(
                    frames=u.arrays[0],
                    fps=float(fps_v)
                    if isinstance(fps_v, (int, float)) and fps_v > 0
                    else float(fps),
                    format=fmt if fmt in ("gif", "mp4") else format,
                    caption=_tag(r, cap if isinstance(cap, str) else None),
                )
            )
    return Videos(videos=out) if out else None


def _json_cell(cell: TableCell, images: list[np.ndarray]) -> Any:
    if isinstance(cell, np.ndarray):
        images.append(cell)
        return {"__image__": len(images) - 1}
    return cell


def _cell_from_json(cell: Any, arrays: list[np.ndarray], r: int, desc: str) -> TableCell:
    if isinstance(cell, dict):
        k = cell.get("__image__")
        if not isinstance(k, int) or not 0 <= k < len(arrays):
            raise RankDivergenceError(f"{_name(desc)}: rank {r} sent a bad image cell")
        return arrays[k]
    if cell is None or isinstance(cell, (bool, int, float, str)):
        return cell
    raise RankDivergenceError(f"{_name(desc)}: rank {r} sent a cell of type {type(cell).__name__}")


def collect_table(
    world: World,
    columns: Sequence[str],
    data: Sequence[Sequence[Any]],
    *,
    desc: str,
    ranks: RanksArg = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float | None = None,
    group: Any = None,
) -> Table | None:
    """A table for the writer: rank 0's rows (default) or the chosen ranks' rows in rank order.

    A gathered table gets a leading ``rank`` column (``_rank`` if ``rank`` is taken). At most
    ``max_rows`` rows are kept per call (split fairly among ranks), with a warning.
    """
    desc = _check_desc(desc)
    max_rows = _check_cap(max_rows, "max_rows", desc)
    max_bytes = _check_cap(max_bytes, "max_bytes", desc)
    chosen = _normalize_ranks(world, ranks, desc)
    if chosen is None:
        if not world.is_global_zero:
            return None
        table = to_table(columns, data, desc=desc)
        if len(table.rows) > max_rows:
            _warn_dropped(desc, "rows", {0: (max_rows, len(table.rows))}, max_bytes, max_rows)
            table = Table(columns=table.columns, rows=table.rows[:max_rows])
        return table

    def prepare() -> _Parcel:
        table = to_table(columns, data, desc=desc)
        units = []
        for row in table.rows:
            imgs: list[np.ndarray] = []
            cells = [_json_cell(c, imgs) for c in row]
            units.append(_Unit({"cells": cells}, imgs))
        return _Parcel(
            units=units,
            extra={"columns": table.columns},
            aux=_stable_hash("\0".join(table.columns)),
        )

    gathered = _gather_parcels(
        world,
        "table",
        desc,
        chosen,
        prepare,
        max_bytes=max_bytes,
        max_items=max_rows,
        timeout=timeout,
        group=group,
    )
    if gathered is None:
        return None
    _warn_dropped(desc, "rows", gathered.dropped, max_bytes, max_rows)
    cols: list[str] | None = None
    rows: list[list[TableCell]] = []
    for r, p in gathered.parcels:
        got = p.extra.get("columns")
        if isinstance(got, list) and cols is None:
            cols = [str(c) for c in got]
        for u in p.units:
            cells = u.meta.get("cells")
            if not isinstance(cells, list) or (cols is not None and len(cells) != len(cols)):
                raise RankDivergenceError(f"{_name(desc)}: rank {r} sent a malformed row")
            rows.append([r, *(_cell_from_json(c, u.arrays, r, desc) for c in cells)])
    if cols is None:
        return None  # no chosen rank had a row, and rank 0 (not chosen) knows no columns
    rank_col = "rank" if "rank" not in cols else "_rank"
    return Table(columns=[rank_col, *cols], rows=rows)


def _is_dtensor(x: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(x, DTensor)


def _histogram_from_stats(
    groups: list[tuple[Any, int, tuple[int, ...], torch.device]],
    st: _LocalStats | None,
    error: BaseException | None,
    *,
    world: World,
    kind_fp: str,
    desc: str,
    bins: int,
    timeout: float | None,
) -> Histogram | None:
    """Shared edges from the headers' min/max, then counts summed: O(bins) communication.

    ``groups`` are (group, size, global ranks, comm device), reduced over one after the other (one per mesh
    dimension for a DTensor); ``st`` is None on a rank that contributes no values.
    """
    fingerprint = _stable_hash(f"histogram\0{desc}\0{kind_fp}\0{bins}")
    lo, hi = (st.lo, st.hi) if st is not None else (math.inf, -math.inf)
    n_finite = st.n_finite if st is not None else 0
    n_nonfinite = st.n_nonfinite if st is not None else 0
    dtype_bits = st.dtype_bits if st is not None else 0
    any_error = error is not None
    for group, size, _, device in groups:
        h = _make_header("histogram", desc, fingerprint, _next_counter(group) if size > 1 else 0)
        h[_H_STATUS] = _ERROR if any_error else _OK
        h[_H_LO], h[_H_HI] = _float_bits(lo), _float_bits(hi)
        h[_H_FINITE], h[_H_NONFINITE], h[_H_DTYPE] = n_finite, n_nonfinite, dtype_bits
        headers = _exchange_headers(
            h, group=group, group_size=size, comm_device=device, desc=desc, timeout=timeout
        )
        any_error = any(int(x[_H_STATUS]) == _ERROR for x in headers)
        lo = min(_bits_float(int(x[_H_LO])) for x in headers)
        hi = max(_bits_float(int(x[_H_HI])) for x in headers)
        n_finite = sum(int(x[_H_FINITE]) for x in headers)
        n_nonfinite = sum(int(x[_H_NONFINITE]) for x in headers)
        dtype_bits = max(int(x[_H_DTYPE]) for x in headers)
    if error is not None:
        raise error
    if any_error:
        if world.is_global_zero:
            warnings.warn(
                f"{_name(desc)}: the histogram input on another rank was rejected (the error is "
                "raised there); nothing is written for this call",
                MediaWarning,
                stacklevel=4,
            )
        return None
    edges = _edges(lo, hi, bins, dtype_bits or 64, desc)
    if st is not None:
        counts = _bin_counts(st.finite, edges).to(torch.int64)
    else:
        counts = torch.zeros(bins, dtype=torch.int64)
    for group, size, _, device in groups:
        if size > 1:
            counts = counts.to(device)
            _wait(
                dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group, async_op=True),
                timeout,
                desc,
                "the histogram count reduction",
            )
    if not world.is_global_zero:
        return None
    return Histogram(counts=counts.cpu().numpy(), edges=edges, nonfinite=n_nonfinite)


def _group_device(group: Any) -> torch.device:
    """Where a collective's tensors must live: the current GPU for a pure NCCL group, else host."""
    if str(dist.get_backend(group)) == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _dtensor_histogram(
    world: World, values: Any, desc: str, bins: int, ranks: Any, timeout: float | None
) -> Histogram | None:
    from torch.distributed.tensor import Replicate

    if not (
        ranks == "all" or (isinstance(ranks, int) and not isinstance(ranks, bool) and ranks == 0)
    ):
        raise LogValueError(
            f"{_name(desc)}: a DTensor's histogram covers the whole tensor; ranks must be 0 or "
            f"'all', got {ranks!r}"
        )
    mesh = values.device_mesh
    placements = list(values.placements)
    if any(p.is_partial() for p in placements):  # pending sums: the values are not final yet
        values = values.redistribute(
            mesh, [Replicate() if p.is_partial() else p for p in placements]
        )
        placements = list(values.placements)
    if not any(p.is_shard() for p in placements):  # replicated: rank 0's copy is the tensor
        return histogram(values.to_local(), desc=desc, bins=bins) if world.is_global_zero else None
    coord = mesh.get_coordinate()
    if coord is None:
        return None  # this rank holds no part of the tensor
    contributes = all(c == 0 for c, p in zip(coord, placements, strict=True) if p.is_replicate())
    st: _LocalStats | None = None
    error: BaseException | None = None
    try:
        x = _histogram_values(values.to_local(), desc)
        st = _local_stats(x) if contributes else None
    except Exception as exc:
        error = exc
    groups = []
    for d in range(mesh.ndim):
        g = mesh.get_group(d)
        groups.append(
            (g, dist.get_world_size(g), tuple(dist.get_process_group_ranks(g)), _group_device(g))
        )
    layout = f"dtensor{tuple(mesh.shape)}{[str(p) for p in placements]}"
    return _histogram_from_stats(
        groups, st, error, world=world, kind_fp=layout, desc=desc, bins=bins, timeout=timeout
    )


def collect_histogram(
    world: World,
    values: Any,
    *,
    desc: str,
    bins: int = 64,
    ranks: RanksArg = 0,
    timeout: float | None = None,
    group: Any = None,
) -> Histogram | None:
    """The histogram the writer logs (numpy.histogram's edges and counts).

    ``ranks=0``: rank 0's values, no communication (DDP replicas are identical). ``ranks="all"``
    or a list: the chosen ranks' values together, from shared edges (global min and max carried
    in the header exchange) and summed counts. A sharded DTensor (an FSDP parameter) always
    gives the whole tensor's histogram, each element counted once: every rank of its mesh must
    call. Communication grows with ``bins`` and the group size, never with the tensor.
    Non-finite values are left out and counted in ``Histogram.nonfinite``.
    """
    desc = _check_desc(desc)
    bins = _check_bins(bins, desc)
    if _is_dtensor(values):
        return _dtensor_histogram(world, values, desc, bins, ranks, timeout)
    chosen = _normalize_ranks(world, ranks, desc)
    if chosen is None:
        return histogram(values, desc=desc, bins=bins) if world.is_global_zero else None
    if not world.writer_in_group:
        return None
    st: _LocalStats | None = None
    error: BaseException | None = None
    if world.rank in chosen:
        try:
            st = _local_stats(_histogram_values(values, desc))
        except Exception as exc:
            error = exc
    distributed = world.group_size > 1 and world.backend is not None
    pg, dev = _comm(world, group)
    groups = [(pg, world.group_size if distributed else 1, tuple(world.group_ranks), dev)]
    return _histogram_from_stats(
        groups,
        st,
        error,
        world=world,
        kind_fp=",".join(map(str, chosen)),
        desc=desc,
        bins=bins,
        timeout=timeout,
    )


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "Histogram",
    "Images",
    "MediaWarning",
    "MediaItem",
    "Table",
    "TableCell",
    "Video",
    "Videos",
    "collect_histogram",
    "collect_images",
    "collect_plot",
    "collect_table",
    "collect_videos",
    "figure_to_images",
    "histogram",
    "to_images",
    "to_table",
    "to_videos",
]
