"""A run's configuration as a plain dict, with what could leak a credential redacted.

[Logger.log_config][distlog.Logger.log_config] writes the result to every sink; the redaction
happens here, before any sink (or wandb) sees a value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distlog.errors import LogTypeError

__all__ = ["REDACTED", "looks_secret", "to_config_dict"]

# Words that mark a config key as holding a secret; a key is split into words at "_", "-", "."
# and camelCase boundaries ("apiKey" -> api, key), so "tokenizer" or "monkey" are not secrets.
_SECRET_WORDS = frozenset(
    {
        "token", "tokens", "key", "keys", "apikey", "apikeys", "password", "passwords", "passwd",
        "pwd", "secret", "secrets", "credential", "credentials", "auth", "authorization", "pat",
    }
)  # fmt: skip
# Tokenizer settings such as pad_token="<pad>" name a vocabulary entry, not a credential.
_VOCABULARY_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)([^/\s@]+)(@)")
REDACTED = "***REDACTED***"


def looks_secret(key: str) -> bool:
    """True when a config key names a secret (token, api key, password, secret, credentials)."""
    words = [w.lower() for w in _WORD.findall(key)]
    for i, word in enumerate(words):
        if word in _SECRET_WORDS:
            if word.startswith("token") and i > 0 and words[i - 1] in _VOCABULARY_TOKENS:
                continue
            return True
    return False


def to_config_dict(config: Any, *, redact: bool = True) -> dict[str, Any]:
    """A plain nested dict from a dataclass, a mapping or an object with ``__dict__``.

    With ``redact`` (the default), what could leak a credential is replaced by
    ``***REDACTED***`` before any sink sees it: string values (and other objects, and the
    strings of a list) under a key that looks like a secret ([looks_secret][distlog.config.looks_secret]: token,
    api_key, apiKey, password, secret, credentials, ...), and the password of any URL
    (``scheme://user:password@host``). Numbers, flags and None are kept (``max_tokens=512`` is
    a hyperparameter, not a credential).
    """

    def convert(value: Any, secret: bool = False) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): convert(v, redact and looks_secret(str(k))) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v, secret) for v in value]
        if isinstance(value, bool | int | float) or value is None:
            return value
        if secret:
            return REDACTED
        if isinstance(value, str):
            return _URL_PASSWORD.sub(rf"\1{REDACTED}\3", value) if redact else value
        if isinstance(value, Path):
            return str(value)
        return repr(value) if not hasattr(value, "item") else _scalar_or_repr(value)

    result = convert(config)
    if not isinstance(result, dict):
        raise LogTypeError(
            f"log_config expects a dataclass or a mapping, got {type(config).__name__}"
        )
    return result


def _scalar_or_repr(value: Any) -> Any:
    try:
        return value.item()
    except Exception:
        return repr(value)
