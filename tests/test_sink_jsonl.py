"""The local run log's config.json: every log_config call merged (as wandb and MLflow keep them),
strict JSON with non-finite floats spelled as in metrics.jsonl."""

from __future__ import annotations

import json
import math

import pytest

import distlog
from distlog.sinks.jsonl import JsonlSink


def strict_load(text: str):
    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_config_calls_are_deep_merged_later_values_winning(tmp_path):
    logger = distlog.Logger(run_dir=tmp_path, async_write=False)
    logger.log_config({"model": {"width": 64, "act": "relu"}, "lr": 0.1})
    logger.log_config({"data": {"dataset": "cifar"}, "model": {"width": 128}})
    logger.finish()
    config = strict_load((tmp_path / "config.json").read_text())
    assert config == {
        "model": {"width": 128, "act": "relu"},
        "lr": 0.1,
        "data": {"dataset": "cifar"},
    }


def test_config_json_is_strict_json_with_non_finite_values_as_in_metrics(tmp_path):
    sink = JsonlSink(tmp_path)
    sink.log_config(
        {"warmup": math.nan, "clip": {"max": math.inf, "min": -math.inf}, "l": [math.nan]}
    )
    sink.close()
    config = strict_load((tmp_path / "config.json").read_text())
    assert config == {
        "warmup": "NaN",
        "clip": {"max": "Infinity", "min": "-Infinity"},
        "l": ["NaN"],
    }


def test_a_restarted_sink_merges_into_the_config_already_there(tmp_path):
    first = JsonlSink(tmp_path)
    first.log_config({"lr": 0.1, 3: "three"})
    first.close()
    again = JsonlSink(tmp_path)
    again.log_config({"seed": 1, 3: "drei"})
    again.close()
    assert strict_load((tmp_path / "config.json").read_text()) == {
        "lr": 0.1,
        "seed": 1,
        "3": "drei",
    }


@pytest.mark.parametrize("damaged", ["{not json", "[1, 2]"])
def test_an_unreadable_config_json_is_replaced_then_merged_into(tmp_path, damaged):
    (tmp_path / "config.json").write_text(damaged)
    sink = JsonlSink(tmp_path)
    sink.log_config({"lr": 0.5})
    assert strict_load((tmp_path / "config.json").read_text()) == {"lr": 0.5}
    sink.log_config({"seed": 1})
    sink.close()
    assert strict_load((tmp_path / "config.json").read_text()) == {"lr": 0.5, "seed": 1}
