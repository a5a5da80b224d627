"""One check for every integration: the framework is installed, in a version it was built for."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from types import ModuleType

__all__ = ["require"]


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string ("2.6.0rc1" -> (2, 6, 0))."""
    parts = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def require(module: str, dist: str, extra: str, low: str, high: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that names the extra and the supported range.

    ``low`` is inclusive and ``high`` exclusive, e.g. ``require("lightning.pytorch",
    "lightning", "lightning", "2.4", "3")`` accepts 2.4 <= version < 3.
    """
    hint = f"pip install 'distlog[{extra}]' ({dist}>={low},<{high})"
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"distlog.integrations.{extra} needs {dist}>={low},<{high}, which is not installed: "
            f"{hint}"
        ) from None
    if not (_release(low) <= _release(version) < _release(high)):
        raise ImportError(
            f"distlog.integrations.{extra} supports {dist}>={low},<{high}; {version} is "
            f"installed: {hint}"
        )
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"could not import {module} ({dist} {version}): {exc}; {hint}") from exc
