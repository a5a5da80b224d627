"""One rule for a key's validity (distlog.keys.check_key), used by every entry that takes a key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distlog
from distlog import LogTypeError, LogValueError
from distlog.keys import check_key
from distlog.media import Images, to_images


@pytest.mark.parametrize("key", ["loss", "train/loss", "a b", "ünï/cödé", "x" * 300, "rank_max"])
def test_valid_keys_pass_unchanged(key: str) -> None:
    assert check_key(key) is key


@pytest.mark.parametrize("key", [["l"], {"a": 1}, {1}, 3, 1.5, None, b"loss", ("a",)])
def test_non_strings_are_type_errors_naming_the_key(key: Any) -> None:
    with pytest.raises(LogTypeError, match="metric keys must be strings") as info:
        check_key(key)
    assert repr(key) in str(info.value)
    assert not isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["", " loss", "loss ", "\tloss", "lo\nss", "lo\x00ss", "\ud800"])
def test_malformed_strings_are_value_errors(key: str) -> None:
    with pytest.raises(LogValueError, match="invalid metric key"):
        check_key(key)


@pytest.mark.parametrize("key", ["step", "time", "media"])
def test_row_columns_are_reserved(key: str) -> None:
    with pytest.raises(LogValueError, match="reserved"):
        check_key(key)
    assert check_key(key, reserved=()) == key


def test_what_names_the_kind_of_key() -> None:
    with pytest.raises(LogTypeError, match="media keys must be strings"):
        check_key(7, "media")


@pytest.fixture(scope="module")
def logger() -> Any:
    log = distlog.Logger(sinks=[], handle_signals=False)
    yield log
    log.finish()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=6))
def test_the_rule_matches_log_scalar(logger: Any, key: str) -> None:
    """check_key gives the heart's answer (log_scalar's) for every string."""

    def outcome(call: Any) -> type | None:
        try:
            call()
        except (LogTypeError, LogValueError) as exc:
            return type(exc)
        return None

    want = outcome(lambda: logger.log_scalar(key, 1.0, "sum"))
    assert outcome(lambda: check_key(key)) is want


@pytest.mark.parametrize(
    ("key", "error"), [(["l"], LogTypeError), (" x", LogValueError), ("step", LogValueError)]
)
def test_every_entry_uses_the_rule(logger: Any, key: Any, error: type) -> None:
    with pytest.raises(error):  # a mapping cannot hold a list: an int stands for it
        logger.log_precomputed({3 if isinstance(key, list) else key: 1.0})
    with pytest.raises(error):
        logger.log_media(key, Images(images=[np.zeros((2, 2, 3), np.uint8)]))
    with pytest.raises(error):
        to_images(np.zeros((2, 2, 3), np.uint8), desc=key)
    with pytest.raises(error):
        logger.log_images(np.zeros((2, 2, 3), np.uint8), desc=key)


def test_torchmetrics_keys_use_the_rule(logger: Any) -> None:
    torchmetrics = pytest.importorskip("torchmetrics")
    metric = torchmetrics.MeanMetric()
    metric.update(1.0)
    with pytest.raises(LogValueError, match="reserved"):
        logger.log_metrics(metric, name="step")
    with pytest.raises(LogTypeError):
        logger.log_metrics(metric, prefix=3)  # type: ignore[arg-type]
    with pytest.raises(LogValueError, match="invalid metric key"):
        logger.log_dict({" m": metric})
