"""The seed page's usage examples (seed_examples.py), under a real torchrun with 2 gloo ranks,
written to wandb offline and read back: exact scalar rows, config, media of every kind, one wandb
run per trainer, and the custom TensorBoard logger's events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dist_harness import subprocess_env
from reference import assert_rows_close, reference_row
from wandb_helpers import run_torchrun, wandb_env

import distlog

pytest.importorskip("wandb")
pytest.importorskip("matplotlib")
pytest.importorskip("tensorboard")
from distlog.wandb_offline import find_run_dirs, read_run  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(distlog.Logger, "log_images"),
        reason="needs distlog.Logger's media methods (log_images...), issue 4",
    ),
]

SCRIPT = Path(__file__).with_name("seed_examples.py")
STEPS = 120


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    proc = run_torchrun(
        SCRIPT, ["--root", str(root), "--steps", str(STEPS)], subprocess_env(**wandb_env(root))
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = {read_run(d).name: read_run(d) for d in find_run_dirs(root / "wandb_dir")}
    return root, runs


def expected(root: Path, name: str) -> dict[int, dict[str, float]]:
    windows = [json.loads((root / f"records-{name}-{r}.json").read_text()) for r in (0, 1)]
    rows: dict[int, dict[str, float]] = {}
    for (step0, s0), (step1, s1) in zip(*windows, strict=True):
        assert step0 == step1
        row = reference_row([[tuple(x) for x in s0], [tuple(x) for x in s1]])
        if row:
            rows.setdefault(step0, {}).update(row)
    return rows


def scalars(rows: dict[int, dict], keys) -> dict[int, dict]:
    out = {s: {k: v for k, v in r.items() if k in keys} for s, r in rows.items()}
    return {s: r for s, r in out.items() if r}


def local_rows(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for row in distlog.read_metrics(run_dir):
        out.setdefault(row["step"], {}).update(
            {k: v for k, v in row.items() if k not in ("step", "time")}
        )
    return out


def test_one_wandb_run_per_trainer(job):
    root, runs = job
    assert sorted(runs) == ["best", "examples"]  # rank 1 made none; TensorBoard trainer none
    for run in runs.values():
        assert run.exit_code == 0 and run.project == "seed" and run.tags == [run.name]


def test_basic_logging_and_callback_rows_are_exact(job):
    root, runs = job
    want = expected(root, "examples")
    keys = {k for row in want.values() for k in row}
    assert {
        "train/loss",
        "train/learning_rate",
        "train/batch_loss",
        "train/grad_norm",
        "train/throughput",
        "callback/batch_time",
    } <= keys
    got = scalars(runs["examples"].rows_by_step(), keys)
    assert sorted(got) == sorted(want) == list(range(10, STEPS + 1, 10))
    for step, row in want.items():
        assert_rows_close(got[step], row)
    assert_rows_close_all(local_rows(root / "local" / "examples"), want)


def assert_rows_close_all(local: dict[int, dict], want: dict[int, dict]) -> None:
    for step, row in want.items():
        assert_rows_close({k: v for k, v in local[step].items() if k in row}, row)


def test_configuration_logging(job):
    _, runs = job
    config = runs["examples"].config
    assert config["model"] == {
        "architecture": "transformer",
        "num_layers": 2,
        "hidden_dim": 16,
        "num_heads": 2,
    }
    assert config["training"]["optimizer"] == "AdamW"
    assert config["data"] == {
        "dataset": "synthetic-8x8",
        "num_train_samples": 400,
        "num_val_samples": 48,
    }


def _last(run, key):
    values = [row[key] for row in run.history if key in row]
    assert values, f"{key} was never logged"
    return values[-1]


def test_image_video_histogram_plot_and_model_tracking(job):
    root, runs = job
    run = runs["examples"]
    files = run.run_dir / "files"
    predictions = _last(run, "val/predictions")
    assert predictions["count"] == 8  # rank 0's first validation batch
    assert all(c.startswith("Pred: ") for c in predictions["captions"])
    assert all((files / f).is_file() for f in predictions["filenames"])
    assert _last(run, "val/attention_maps")["count"] == 8

    videos = _last(run, "val/generated_videos")
    assert [v["caption"] for v in videos["videos"]] == [f"Sample {i}" for i in range(1, 5)]
    assert all((files / v["path"]).is_file() for v in videos["videos"])

    sizes = {
        "embeddings.weight": 16 * 192,
        "embeddings.bias": 16,
        "head.weight": 3 * 16,
        "head.bias": 3,
    }
    for name, numel in sizes.items():
        for kind in ("weights", "gradients"):
            hist = _last(run, f"{kind}/{name}")  # the model's names, not DDP's "module.*"
            assert hist["_type"] == "histogram" and sum(hist["values"]) == numel

    for key in ("training/loss_curve", "val/confusion_matrix", "callback/visualization"):
        assert "image" in _last(run, key)["_type"]
    keys = set().union(*run.history)
    assert {"parameters/embeddings.weight", "gradients/embeddings.weight"} <= keys  # watch


def test_media_also_reach_the_local_run_log(job):
    root, _ = job
    from distlog.runlog import iter_rows

    media = {}
    for row in iter_rows(root / "local" / "examples"):
        media.update(row.get("media", {}))
    assert {
        "val/predictions",
        "val/attention_maps",
        "val/generated_videos",
        "weights/embeddings.weight",
        "training/loss_curve",
    } <= set(media)


def test_best_practices_and_table(job):
    root, runs = job
    run = runs["best"]
    want = expected(root, "best")
    # logged on rank 0 only, once an epoch: rank 0's value, not averaged with anything
    assert [row["metric"] for _, row in sorted(want.items()) if "metric" in row] == [7.0, 8.0]
    keys = {k for row in want.values() for k in row}
    got = scalars(run.rows_by_step(), keys)
    assert sorted(got) == sorted(want)
    for step, row in want.items():
        assert_rows_close(got[step], row)
    val = [row["val/loss"] for _, row in sorted(want.items()) if "val/loss" in row]
    assert val == [pytest.approx((0.25 + 0.5) / 2)] * 2  # both ranks' values, each epoch

    table = _last(run, "val/predictions_table")
    # self.val_dataloader is the sharded loader: rank 0 tabulates its half of the 48 samples
    assert table["ncols"] == 4 and table["nrows"] == 24
    assert _last(run, "samples")["count"] == 100
    assert _last(run, "embeddings")["_type"] == "histogram"


def test_custom_tensorboard_logger(job):
    root, _ = job
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = list((root / "runs" / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(6))
    assert acc.Images("train/inputs")
    assert "config/text_summary" in acc.Tags()["tensors"]  # add_text
