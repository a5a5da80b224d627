"""Media across ranks: the ready-to-write media items that sinks receive.

A media item is what a sink gets after validation, conversion and (when asked) gathering:
plain numpy arrays in uint8, so sinks only encode and write. Conversion and gathering functions
live below the types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np


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
    """Bin ``counts`` (length B) over ``edges`` (length B + 1), like ``numpy.histogram``."""

    counts: np.ndarray
    edges: np.ndarray


TableCell = Union[int, float, str, bool, None, np.ndarray]
"""A table cell: a number, a string, None, or an image as an ``(H, W, C)`` uint8 array."""


@dataclass(frozen=True)
class Table:
    """Rows of cells under named columns; image cells are ``(H, W, C)`` uint8 arrays."""

    columns: list[str]
    rows: list[list[TableCell]] = field(default_factory=list)


MediaItem = Union[Images, Videos, Histogram, Table]
