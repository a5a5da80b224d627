"""What a valid key is: one rule for metric, precomputed, media and torchmetrics keys.

A key must be a ``str`` (anything else, unhashable values such as a list included, is a
[LogTypeError][distlog.LogTypeError]), non-empty, without surrounding whitespace, control
characters or lone surrogates (they cannot be written as UTF-8), and not one of the columns every
row already has (``step``, ``time``, ``media``): those are a
[LogValueError][distlog.LogValueError]. The error names the key and is raised at the call, on
the rank that made it, before any collective.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from typing import Any

from distlog.errors import LogTypeError, LogValueError
from distlog.runlog import RESERVED_KEYS

__all__ = ["check_key"]

_BAD_CATEGORIES = ("Cc", "Cs")  # control characters, lone surrogates


def check_key(key: Any, what: str = "metric", *, reserved: Collection[str] = RESERVED_KEYS) -> str:
    """``key`` itself when it is a valid key, else a clear error naming it.

    ``what`` names the kind of key in the message (``"metric"``, ``"media"``); ``reserved``
    are the row columns a key may not take (by default those of the run log).
    """
    if not isinstance(key, str):  # before any dict lookup: a list key must not be a TypeError
        raise LogTypeError(f"{what} keys must be strings, got {type(key).__name__} {key!r}")
    if (
        not key
        or key != key.strip()
        or any(unicodedata.category(c) in _BAD_CATEGORIES for c in key)
    ):
        raise LogValueError(
            f"invalid {what} key {key!r}: keys must be non-empty, without surrounding "
            "whitespace, control characters or lone surrogates (they can't be written as UTF-8)"
        )
    if key in reserved:
        raise LogValueError(
            f"{what} key {key!r} is reserved: every row already has "
            f"{', '.join(sorted(reserved))} columns; use another name"
        )
    return key
