"""User values to what the buffer holds: a float, or a dense one-element tensor, or a clear error.

Everything that could fail at a flush is checked at the call, on the rank that made the mistake:
a failure inside a flush would leave the other ranks waiting in the exchange until the timeout.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch

from distlog.errors import LogTypeError, LogValueError

__all__ = ["as_float", "plain_tensor", "short_repr"]


def as_float(key: str, value: Any, what: str = "value") -> float:
    """A host number as float, or a clear error naming the key."""
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        value = value.reshape(()).item()  # a 0-d or one-element array, as numpy reductions give
    if isinstance(value, np.timedelta64 | np.datetime64):  # numpy counts them as integers
        raise LogTypeError(
            f"{what} for key {key!r} is a numpy {type(value).__name__} ({short_repr(value)}); "
            "log a number, e.g. a duration in seconds: value / np.timedelta64(1, 's')"
        )
    if isinstance(value, numbers.Real) or isinstance(value, np.integer | np.floating):
        try:
            return float(value)
        except OverflowError:
            raise LogValueError(
                f"{what} for key {key!r} is too large for a float64 ({short_repr(value)})"
            ) from None
        except (TypeError, ValueError) as exc:  # a Real subclass whose __float__ refuses
            raise LogTypeError(
                f"{what} for key {key!r} ({type(value).__name__} {short_repr(value)}) cannot "
                f"be read as a float: {exc}"
            ) from None
    if isinstance(value, complex | np.complexfloating):
        raise LogTypeError(f"{what} for key {key!r} is complex ({value!r}); log a real number")
    raise LogTypeError(
        f"{what} for key {key!r} has type {type(value).__name__}; expected a number, a numpy "
        "scalar or a one-element tensor"
    )


def short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain_tensor(key: str, value: torch.Tensor, what: str = "value") -> torch.Tensor:
    """``value`` as a dense one-element real tensor, or a clear error naming the key.

    Everything that could fail at the flush is checked here, at the call: a failure inside a
    flush would leave the other ranks waiting in the payload exchange until the timeout.
    """
    if hasattr(value, "placements") and hasattr(value, "to_local"):  # a DTensor
        if not all(p.is_replicate() for p in value.placements):
            raise LogValueError(
                f"{what} for key {key!r} is a DTensor with placements {tuple(value.placements)}; "
                "log value.full_tensor() (a collective every rank must call) or a replicated "
                "value"
            )
        value = value.to_local()
    if value.is_nested or value.layout != torch.strided:
        raise LogTypeError(
            f"{what} for key {key!r} is a {'nested' if value.is_nested else str(value.layout)} "
            "tensor; log a dense one-element tensor"
        )
    if value.is_meta:
        raise LogValueError(f"{what} for key {key!r} is a meta tensor: it holds no value")
    if value.is_quantized:
        value = value.dequantize()
    if value.numel() != 1:
        raise LogValueError(
            f"{what} for key {key!r} is a tensor of shape {tuple(value.shape)}; log a "
            "scalar (one element), e.g. reduce it with .mean() first"
        )
    if value.is_complex():
        raise LogTypeError(f"{what} for key {key!r} is a complex tensor; log a real number")
    if value.dtype in _OPAQUE_DTYPES:
        raise LogTypeError(
            f"{what} for key {key!r} is a tensor of {value.dtype}, raw bits with no numeric "
            "value; log it viewed as a number type (e.g. value.view(torch.uint8))"
        )
    return value


# Dtypes that hold bits, not numbers: torch cannot read them as a scalar (.item() raises).
_OPAQUE_DTYPES = frozenset(
    getattr(torch, name)
    for name in ("bits1x8", "bits2x4", "bits4x2", "bits8", "bits16")
    if hasattr(torch, name)
)
