"""Media across ranks: the items sinks receive, and how user input becomes them.

The package has one job per module:

* `items`: the item types sinks receive (plain uint8 numpy arrays); no torch.
* `convert`: user input -> items on one rank, and the pixel scaling rule.
* `gather`: the selective gather (which ranks' media reach the writer).
* `histograms`: local, shared-edge and DTensor histograms.
* `files`: PNG / GIF / MP4 / JSON files for the local run log.

Only the item types are imported eagerly: a sink that imports ``distlog.media.items`` pulls in
no conversion or gathering code. The other public names load on first use. (The histogram
module is ``histograms``: a submodule named ``histogram`` would shadow the function
``distlog.media.histogram`` once imported.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distlog.media.items import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    MAX_BINS,
    Histogram,
    Images,
    MediaItem,
    MediaWarning,
    RanksArg,
    Table,
    TableCell,
    Video,
    Videos,
)

if TYPE_CHECKING:
    from distlog.media.convert import figure_to_images, to_images, to_table, to_videos
    from distlog.media.gather import collect_images, collect_plot, collect_table, collect_videos
    from distlog.media.histograms import collect_histogram, histogram

_LAZY = {
    "figure_to_images": "convert",
    "to_images": "convert",
    "to_table": "convert",
    "to_videos": "convert",
    "collect_images": "gather",
    "collect_plot": "gather",
    "collect_table": "gather",
    "collect_videos": "gather",
    "collect_histogram": "histograms",
    "histogram": "histograms",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'distlog.media' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"distlog.media.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ROWS",
    "MAX_BINS",
    "Histogram",
    "Images",
    "MediaItem",
    "MediaWarning",
    "RanksArg",
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
