"""User input -> media items, on the calling rank, without any communication.

Float pixels are scaled to uint8 by one rule, decided over the whole call (all images or
videos of the batch together): values in [0, 1] are multiplied by 255; values in [-1, 1] with
some negative are mapped by ``(x + 1) * 127.5``; any other range is an error unless
``value_range=(lo, hi)`` is given, which maps lo to 0 and hi to 255. Results are rounded half to
even and clipped to [0, 255]. uint8 passes unchanged, bool maps to 0/255, and other integer
types must already lie in [0, 255] (or come with ``value_range``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from distlog.errors import LogTypeError, LogValueError
from distlog.keys import check_key
from distlog.media.items import Images, Table, TableCell, Video, Videos

# ---------------------------------------------------------------------------------------------
# conversion of user input (local, no communication)
# ---------------------------------------------------------------------------------------------


def label(desc: str) -> str:
    return f"media {desc!r}"


def check_desc(desc: Any) -> str:
    """The media key (``desc``), checked by the one key rule of [distlog.keys][]."""
    return check_key(desc, "media")


def is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def as_tensor(x: Any, desc: str, what: str) -> torch.Tensor:
    """A torch view of a tensor or numpy array (no copy); anything else is a type error."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind in "USVO":
            raise LogTypeError(f"{label(desc)}: {what} has dtype {x.dtype}, expected numbers")
        if x.dtype.kind == "c":
            raise LogTypeError(f"{label(desc)}: {what} is complex ({x.dtype})")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise LogTypeError(
        f"{label(desc)}: {what} must be a torch.Tensor or numpy array, got {type(x).__name__}"
    )


def _check_value_range(value_range: Any, desc: str) -> tuple[float, float] | None:
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise LogTypeError(
            f"{label(desc)}: value_range must be a pair (lo, hi) of numbers, got {value_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise LogValueError(
            f"{label(desc)}: value_range=(lo, hi) needs finite lo < hi, got {value_range!r}"
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
        raise LogTypeError(f"{label(desc)}: pixels are complex ({x.dtype})")
    if not x.is_floating_point():  # other integer types
        if value_range is None:
            lo_v, hi_v = int(x.min()), int(x.max())
            if lo_v < 0 or hi_v > 255:
                raise LogValueError(
                    f"{label(desc)}: integer pixels ({x.dtype}) span [{lo_v}, {hi_v}], outside "
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
            f"{label(desc)}: {bad} pixel value(s) are {'NaN' if has_nan else 'infinite'}"
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
                f"{label(desc)}: float pixels span [{f_lo:.4g}, {f_hi:.4g}], outside [0, 1] "
                "and [-1, 1]; pass value_range=(lo, hi) or convert to uint8"
            )
    return scaled.round().clamp_(0, 255).to(torch.uint8)


def _check_channels(c: int, desc: str, shape: tuple[int, ...], layout: str) -> None:
    if c not in (1, 3, 4):
        raise LogValueError(
            f"{label(desc)}: got shape {shape} read as {layout}, which has {c} channels; "
            "expected 1, 3 or 4 (torch tensors are channel-first, numpy arrays channel-last)"
        )


def _captions(caption: Any, captions: Any, n: int, desc: str) -> list[str] | None:
    if caption is not None and captions is not None:
        raise LogTypeError(f"{label(desc)}: pass caption= or captions=, not both")
    value = caption if caption is not None else captions
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * n
    if not isinstance(value, Sequence):
        raise LogTypeError(
            f"{label(desc)}: caption must be a string or a list of strings, got "
            f"{type(value).__name__}"
        )
    if len(value) != n:
        raise LogValueError(f"{label(desc)}: {len(value)} captions for {n} item(s)")
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
        raise LogValueError(f"{label(desc)}: expected {layout}, got shape {shape}")
    if not batched:
        x = x.unsqueeze(0)
    if channel_first:
        c = x.shape[1]
        _check_channels(c, desc, shape, layout)
        x = x.permute(0, 2, 3, 1) if kind == "images" else x.permute(0, 2, 3, 4, 1)
    else:
        _check_channels(x.shape[-1], desc, shape, layout)
    if x.shape[0] == 0:
        raise LogValueError(f"{label(desc)}: the batch is empty (shape {shape})")
    if any(int(s) == 0 for s in x.shape[1:]):
        raise LogValueError(f"{label(desc)}: a dimension is zero (shape {shape})")
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
            raise LogValueError(f"{label(desc)}: the batch is empty (an empty list)")
        parts = []
        for i, img in enumerate(images):
            try:
                parts.append(_single_image_tensor(img, desc))
            except (LogValueError, LogTypeError) as exc:
                raise type(exc)(f"{exc} (item {i})") from None
        shapes = {tuple(p.shape) for p in parts}
        dtypes = {p.dtype for p in parts}
        if len(dtypes) > 1:
            raise LogTypeError(f"{label(desc)}: list items mix dtypes {sorted(map(str, dtypes))}")
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
    x = as_tensor(images, desc, "images")
    channel_first = is_tensor(images)
    if x.ndim == 2:  # a single (H, W) grayscale image
        x = x.unsqueeze(0) if channel_first else x.unsqueeze(-1)
    batched = x.ndim == 4
    if x.ndim not in (3, 4):
        layout = "(B, C, H, W) or (C, H, W)" if channel_first else "(B, H, W, C) or (H, W, C)"
        raise LogValueError(f"{label(desc)}: expected {layout}, got shape {tuple(x.shape)}")
    b = _frames_batch(x, desc, batched=batched, channel_first=channel_first, kind="images")
    return list(_to_uint8_numpy(_pixels_to_uint8(b, desc, value_range), x))


def _single_image_tensor(img: Any, desc: str) -> torch.Tensor:
    """One image from a list, as an (H, W, C) tensor of its original dtype."""
    if _is_pil(img) or _is_wandb_image(img):
        return torch.from_numpy(_pil_or_wandb_to_array(img, desc))
    x = as_tensor(img, desc, "image")
    channel_first = is_tensor(img)
    if x.ndim == 2:
        x = x.unsqueeze(0) if channel_first else x.unsqueeze(-1)
    if x.ndim != 3:
        layout = "(C, H, W)" if channel_first else "(H, W, C)"
        raise LogValueError(
            f"{label(desc)}: each list item must be {layout}, got shape {tuple(img.shape)}"
        )
    return _frames_batch(x, desc, batched=False, channel_first=channel_first, kind="images")[0]


def _pil_or_wandb_to_array(obj: Any, desc: str) -> np.ndarray:
    if _is_wandb_image(obj):
        pil = getattr(obj, "image", None)
        if pil is None:
            raise LogValueError(f"{label(desc)}: this wandb.Image holds no pixels")
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
    desc = check_desc(desc)
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
        raise LogValueError(f"{label(desc)}: fps must be a positive number, got {fps!r}")
    if format not in ("gif", "mp4"):
        raise LogValueError(f"{label(desc)}: format must be 'gif' or 'mp4', got {format!r}")
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
    desc = check_desc(desc)
    vr = _check_value_range(value_range, desc)
    fps_f, fmt = _check_fps_format(fps, format, desc)
    if isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            raise LogValueError(f"{label(desc)}: the batch is empty (an empty list)")
        parts = []
        for i, v in enumerate(videos):
            t = as_tensor(v, desc, f"video {i}")
            cf = is_tensor(v)
            try:
                parts.append(
                    _frames_batch(t, desc, batched=False, channel_first=cf, kind="videos")[0]
                )
            except LogValueError as exc:
                raise LogValueError(f"{exc} (item {i})") from None
        if len({tuple(p.shape) for p in parts}) > 1:
            raise LogValueError(
                f"{label(desc)}: videos in a list must share one shape, got "
                f"{sorted({tuple(p.shape) for p in parts})}"
            )
        if len({p.dtype for p in parts}) > 1:
            raise LogTypeError(f"{label(desc)}: videos in a list mix dtypes")
        batch_src = parts[0]
        batch = torch.stack(parts)
    else:
        x = as_tensor(videos, desc, "videos")
        cf = is_tensor(videos)
        batched = x.ndim == 5
        if x.ndim not in (4, 5):
            layout = "(B, C, T, H, W) or (C, T, H, W)" if cf else "(B, T, H, W, C) or (T, H, W, C)"
            raise LogValueError(f"{label(desc)}: expected {layout}, got shape {tuple(x.shape)}")
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


def close_figure(fig: Any) -> None:
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
            f"{label(desc)}: expected a matplotlib Figure (or Axes), got {type(figure).__name__}"
        )
    return fig


def figure_to_images(figure: Any, *, desc: str, caption: str | None = None) -> Images:
    """Render a matplotlib figure (or Axes) with Agg into one RGB(A) image, then close it.

    Rendering happens here, on the caller's thread (matplotlib figures are not thread-safe);
    the PNG encoding happens later in the sinks. No plotly needed.
    """
    desc = check_desc(desc)
    fig = _as_figure(figure, desc)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        close_figure(fig)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.array(canvas.buffer_rgba(), dtype=np.uint8, copy=True)
    finally:
        close_figure(fig)
    image = rgba if bool((rgba[..., 3] < 255).any()) else np.ascontiguousarray(rgba[..., :3])
    return Images(images=[image], captions=None if caption is None else [str(caption)])


def _table_cell(cell: Any, desc: str, row: int, col: str) -> TableCell:
    where = f"{label(desc)}: row {row}, column {col!r}"
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
                raise type(exc)(f"{exc} ({where[len(label(desc)) + 2 :]})") from None
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
    desc = check_desc(desc)
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise LogTypeError(f"{label(desc)}: columns must be a list of strings")
    cols = list(columns)
    if not cols or not all(isinstance(c, str) for c in cols):
        raise LogTypeError(f"{label(desc)}: columns must be a non-empty list of strings")
    if len(set(cols)) != len(cols):
        raise LogValueError(f"{label(desc)}: duplicate column names in {cols}")
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise LogTypeError(f"{label(desc)}: data must be a list of rows")
    rows: list[list[TableCell]] = []
    for i, row in enumerate(data):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise LogTypeError(f"{label(desc)}: row {i} is a {type(row).__name__}, not a list")
        if len(row) != len(cols):
            raise LogValueError(
                f"{label(desc)}: row {i} has {len(row)} cells for {len(cols)} columns"
            )
        rows.append([_table_cell(c, desc, i, name) for c, name in zip(row, cols, strict=True)])
    return Table(columns=cols, rows=rows)


def check_cap(value: Any, name: str, desc: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise LogValueError(f"{label(desc)}: {name} must be a non-negative integer, got {value!r}")
    return int(value)
