"""The media items sinks receive: plain uint8 numpy arrays, already validated and converted.

Sinks import this module only; it needs numpy and nothing of torch, so no sink pulls in the
conversion or gathering code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

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
