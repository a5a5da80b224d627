"""User input -> media items, on the calling rank, without any communication.

Float pixels are scaled to uint8 by one rule, decided over the whole call (all images or
videos of the batch together): values in [0, 1] are multiplied by 255; values in [-1, 1] with
some negative are mapped by ``(x + 1) * 127.5``; any other range is an error unless
``value_range=(lo, hi)`` is given, which maps lo to 0 and hi to 255. Results are rounded half to
even and clipped to [0, 255]. Without ``value_range``, uint8 passes unchanged, bool maps to
0/255, and other integer types (uint16/32/64 included) must already lie in [0, 255]; with
``value_range`` every input, uint8 and bool (as 0/1) included, follows the lo/hi mapping.
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
from distlog.media.items import Histogram, Images, Table, TableCell, Video, Videos

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


def check_text(text: str, desc: str, what: str) -> str:
    """``text`` itself when UTF-8 can encode it; a lone surrogate is a LogValueError naming
    ``desc`` (every sink writes UTF-8, and would fail later, on the writer thread)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LogValueError(
            f"{label(desc)}: {what} {text!r} holds a lone surrogate ({exc.reason}); it cannot be "
            "written as UTF-8"
        ) from None
    return text


def check_tensor(x: torch.Tensor, desc: str, what: str) -> None:
    """A tensor whose values can be read: not on the meta device, dense, not quantized."""
    if x.is_meta:
        raise LogTypeError(f"{label(desc)}: {what} is on the meta device and holds no values")
    if x.layout != torch.strided or getattr(x, "is_nested", False):
        raise LogTypeError(
            f"{label(desc)}: {what} has layout {x.layout}{' (nested)' if x.is_nested else ''}; "
            "pass a dense tensor (.to_dense())"
        )
    if x.is_quantized:
        raise LogTypeError(
            f"{label(desc)}: {what} is quantized ({x.dtype}); pass .dequantize() or .int_repr()"
        )


def as_tensor(x: Any, desc: str, what: str) -> torch.Tensor:
    """A torch view of a tensor or numpy array (no copy); anything else is a type error."""
    if isinstance(x, torch.Tensor):
        check_tensor(x, desc, what)
        return x.detach()
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind in "USVOmM":
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


_WIDE_UNSIGNED = tuple(
    d for d in (getattr(torch, f"uint{n}", None) for n in (16, 32, 64)) if d is not None
)


def _integer_span(x: torch.Tensor) -> tuple[int, int]:
    """Exact min and max of an integer tensor (torch has no min/max for uint16/32/64)."""
    if x.dtype in _WIDE_UNSIGNED:
        if x.dtype == getattr(torch, "uint64", None):  # beyond int64: numpy holds it exactly
            arr = x.detach().cpu().numpy()
            return int(arr.min()), int(arr.max())
        x = x.to(torch.int64)  # uint16 / uint32 fit exactly
    return int(x.min()), int(x.max())


def _pixels_to_uint8(
    x: torch.Tensor, desc: str, value_range: tuple[float, float] | None
) -> torch.Tensor:
    """Apply the scaling rule (module docstring) to a whole batch; returns a uint8 tensor."""
    if value_range is None and x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool:
        if value_range is None:
            return x.to(torch.uint8) * 255
        x = x.to(torch.uint8)  # 0 / 1, mapped by value_range below
    if x.is_complex():
        raise LogTypeError(f"{label(desc)}: pixels are complex ({x.dtype})")
    if not x.is_floating_point():  # integer types
        if value_range is None:
            lo_v, hi_v = _integer_span(x)
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
        return [check_text(value, desc, "the caption")] * n
    if isinstance(value, (bytes, bytearray, memoryview)) or not isinstance(value, Sequence):
        raise LogTypeError(
            f"{label(desc)}: caption must be a string or a list of strings, got "
            f"{type(value).__name__}"
        )
    if len(value) != n:
        raise LogValueError(f"{label(desc)}: {len(value)} captions for {n} item(s)")
    out = []
    for i, c in enumerate(value):
        if isinstance(c, (bytes, bytearray, memoryview)):
            raise LogTypeError(f"{label(desc)}: caption {i} is {type(c).__name__}, not a string")
        out.append(check_text(str(c), desc, f"caption {i}"))
    return out


def _pil_to_array(img: Any) -> np.ndarray:
    """A PIL image's pixels, (H, W, C). 8-bit modes come back uint8; the 16-bit, 32-bit
    integer and float modes (``I;16``, ``I``, ``F``) keep their values and dtype, so that the
    pixel rule applies to them as to the same numbers in an array (PIL's own conversion to RGB
    would clip them to 0 or 255)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        arr = np.asarray(img)
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=True)  # I;16B is big-endian
        return arr[..., None] if arr.ndim == 2 else arr
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
        arr = _pil_or_wandb_to_array(images, desc)
        pixels = torch.from_numpy(arr)
        return [_to_uint8_numpy(_pixels_to_uint8(pixels, desc, value_range), pixels)]
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
    if caption is None:
        return Images(images=[image])
    if isinstance(caption, (bytes, bytearray, memoryview)):
        raise LogTypeError(f"{label(desc)}: caption must be a string, got {type(caption).__name__}")
    return Images(images=[image], captions=[check_text(str(caption), desc, "the caption")])


def _scalar_cell(value: Any, where: str, what: str) -> TableCell:
    """A number, string, bool or None that JSON (and every sink) can hold, else a clear error."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LogValueError(
                f"{where}: the string {value!r} holds a lone surrogate ({exc.reason}); it "
                "cannot be written as UTF-8"
            ) from None
        return str(value)
    raise LogTypeError(
        f"{where}: {what} holds a {type(value).__name__} ({value!r:.60}); cells may be numbers, "
        "strings, bools, None or images"
    )


def _table_cell(cell: Any, desc: str, row: int, col: str) -> TableCell:
    where = f"{label(desc)}: row {row}, column {col!r}"
    if cell is None or isinstance(cell, (bool, int, float, str)):
        return _scalar_cell(cell, where, "the cell")
    if isinstance(cell, (np.datetime64, np.timedelta64)):  # .item() would give a bare int
        raise LogTypeError(
            f"{where}: cells may be numbers, strings, bools, None or images, got "
            f"{type(cell).__name__} ({cell!r}); convert it to a string or a number first"
        )
    if isinstance(cell, np.generic):
        return _scalar_cell(cell.item(), where, f"the {type(cell).__name__} cell")
    if _is_pil(cell) or _is_wandb_image(cell):
        try:
            return _image_batch(cell, desc, None)[0]
        except (LogValueError, LogTypeError) as exc:
            raise type(exc)(f"{exc} ({where[len(label(desc)) + 2 :]})") from None
    if isinstance(cell, (torch.Tensor, np.ndarray)):
        if isinstance(cell, torch.Tensor):
            check_tensor(cell, desc, f"the cell at row {row}, column {col!r}")
        if cell.ndim == 0 or (cell.ndim == 1 and cell.shape[0] == 1):
            if isinstance(cell, np.ndarray) and cell.dtype.kind in "mM":
                raise LogTypeError(
                    f"{where}: cells may be numbers, strings, bools, None or images, got a "
                    f"{cell.dtype} array; convert it to a string or a number first"
                )
            return _scalar_cell(cell.reshape(()).item(), where, f"the {cell.dtype} cell")
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
    cols = [check_text(str(c), desc, "the column name") for c in cols]
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


def _check_pixels(arr: Any, where: str, ndim: int, layout: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise LogTypeError(f"{where} must be a numpy array, got {type(arr).__name__}")
    if (
        arr.dtype != np.uint8
        or arr.ndim != ndim
        or arr.shape[-1] not in (1, 3, 4)
        or any(int(s) == 0 for s in arr.shape)
    ):
        raise LogValueError(
            f"{where} must be {layout} uint8 with C in 1, 3, 4, got {arr.dtype} {arr.shape} "
            "(to_images / to_videos convert other input)"
        )


def _check_caption(caption: Any, desc: str, where: str) -> None:
    if caption is None:
        return
    if not isinstance(caption, str):
        raise LogTypeError(f"{where}: a caption must be a string, got {type(caption).__name__}")
    check_text(caption, desc, "the caption")


def check_item(item: Any, desc: str) -> None:
    """Check an already-converted media item (what ``Logger.log_media`` queues) at the call.

    The sinks take these items as they are, on the writer thread; anything they could not
    write (another type, float or CHW pixels, a malformed histogram, an unencodable cell) is a
    LogTypeError / LogValueError naming ``desc`` here instead of a lost item there.
    """
    where = label(desc)
    if isinstance(item, Images):
        if not isinstance(item.images, Sequence) or len(item.images) == 0:
            raise LogValueError(f"{where}: Images.images must be a non-empty list of arrays")
        for i, arr in enumerate(item.images):
            _check_pixels(arr, f"{where}: image {i}", 3, "(H, W, C)")
        if item.captions is not None:
            if not isinstance(item.captions, Sequence) or isinstance(item.captions, str):
                raise LogTypeError(f"{where}: Images.captions must be a list of strings or None")
            if len(item.captions) != len(item.images):
                raise LogValueError(
                    f"{where}: {len(item.captions)} captions for {len(item.images)} image(s)"
                )
            for c in item.captions:
                _check_caption(c, desc, where)
    elif isinstance(item, Videos):
        if not isinstance(item.videos, Sequence) or len(item.videos) == 0:
            raise LogValueError(f"{where}: Videos.videos must be a non-empty list of Video")
        for i, video in enumerate(item.videos):
            if not isinstance(video, Video):
                raise LogTypeError(f"{where}: video {i} is a {type(video).__name__}, not a Video")
            _check_pixels(video.frames, f"{where}: video {i}", 4, "(T, H, W, C)")
            _check_fps_format(video.fps, video.format, desc)
            _check_caption(video.caption, desc, where)
    elif isinstance(item, Histogram):
        counts, edges = np.asarray(item.counts), np.asarray(item.edges)
        if counts.ndim != 1 or edges.ndim != 1 or len(edges) != len(counts) + 1 or not len(counts):
            raise LogValueError(
                f"{where}: a Histogram needs 1-D counts (B) and edges (B + 1), got shapes "
                f"{counts.shape} and {edges.shape}"
            )
        if counts.dtype.kind not in "iu" or bool((counts < 0).any()):
            raise LogValueError(f"{where}: histogram counts must be non-negative integers")
        if edges.dtype.kind not in "iuf" or not bool(np.isfinite(edges).all()):
            raise LogValueError(f"{where}: histogram edges must be finite numbers")
        if bool((np.diff(edges.astype(np.float64)) < 0).any()):
            raise LogValueError(f"{where}: histogram edges must not decrease")
        nonfinite = item.nonfinite
        if isinstance(nonfinite, bool) or not isinstance(nonfinite, (int, np.integer)):
            raise LogTypeError(f"{where}: Histogram.nonfinite must be an integer")
        if nonfinite < 0:
            raise LogValueError(f"{where}: Histogram.nonfinite must not be negative")
    elif isinstance(item, Table):
        cols = item.columns
        if isinstance(cols, str) or not isinstance(cols, Sequence) or not cols:
            raise LogTypeError(f"{where}: Table.columns must be a non-empty list of strings")
        for c in cols:
            if not isinstance(c, str):
                raise LogTypeError(f"{where}: Table.columns must be strings, got {c!r}")
            check_text(c, desc, "the column name")
        if len(set(cols)) != len(cols):
            raise LogValueError(f"{where}: duplicate column names in {list(cols)}")
        if isinstance(item.rows, str) or not isinstance(item.rows, Sequence):
            raise LogTypeError(f"{where}: Table.rows must be a list of rows")
        for r, row in enumerate(item.rows):
            if isinstance(row, str) or not isinstance(row, Sequence) or len(row) != len(cols):
                raise LogValueError(f"{where}: row {r} is not a list of {len(cols)} cells")
            for col, cell in zip(cols, row, strict=True):
                at = f"{where}: row {r}, column {col!r}"
                if isinstance(cell, np.ndarray):
                    _check_pixels(cell, f"{at}: an image cell", 3, "(H, W, C)")
                elif isinstance(cell, np.generic) and not isinstance(cell, (float, str)):
                    raise LogTypeError(
                        f"{at}: a {type(cell).__name__} cell; Table cells are Python numbers, "
                        "strings, bools, None or images (to_table converts numpy scalars)"
                    )
                else:
                    _scalar_cell(cell, at, "the cell")
    else:
        raise LogTypeError(
            f"{where}: log_media takes Images, Videos, Histogram or Table (see distlog.media), "
            f"got {type(item).__name__}; log_images / log_table / ... convert other input"
        )
