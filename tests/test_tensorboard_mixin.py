"""TensorBoardLoggerMixin in a 2-rank gloo job: one writer, aggregated values, events read back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from dist_harness import run_ranks  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

import distlog  # noqa: E402
from distlog.media import Images  # noqa: E402
from distlog.mixins import LoggerConfigMixin, LoggingParameters  # noqa: E402
from distlog.tensorboard_mixin import TensorBoardLoggerMixin  # noqa: E402

STEPS = 6
LOG_EVERY = 2


def loss_of(rank: int, step: int) -> float:
    return 1.0 / (step + 1) + 0.25 * rank


class Trainer(TensorBoardLoggerMixin):
    pass


def _train(rank: int, root: str) -> dict[str, object]:
    os.chdir(root)  # the seed's mixin writes to runs/{experiment}, relative to the job
    config = LoggerConfigMixin(
        experiment="tb", logging_parameters=LoggingParameters(run_dir="local/tb")
    )
    trainer = Trainer(config)
    trainer.log_config({"lr": 0.1, "layers": 2})
    for step in range(1, STEPS + 1):
        trainer.log_scalar("train/loss", loss_of(rank, step))
        trainer.log_scalar("data/samples", 8, reduce="sum")
        if step % LOG_EVERY == 0:
            trainer.global_step = step
            if step == STEPS and trainer.logger is not None:
                image = np.full((4, 5, 3), 40 * (rank + 1), dtype=np.uint8)
                trainer.logger.log_media("val/sample", Images([image]))
            trainer.flush_logs(step)
    out = {
        "has_sink": trainer.tensorboard_sink is not None,
        "writer": type(trainer.writer).__name__ if trainer.writer is not None else None,
        "dir": str(trainer.tensorboard_dir),
    }
    trainer.finish()
    return out


@pytest.mark.slow
def test_rank_zero_writes_aggregated_tensorboard_events(tmp_path):
    results = run_ranks(_train, 2, str(tmp_path), timeout=180)
    assert [r["has_sink"] for r in results] == [True, False]
    assert results[0]["writer"] == "SummaryWriter" and results[1]["writer"] is None
    tb_dir = Path("local") / "tb" / "tensorboard"  # inside the run directory
    assert results[0]["dir"] == str(tb_dir)

    event_files = list(tmp_path.glob("**/events.out.tfevents.*"))
    assert [p.parent for p in event_files] == [tmp_path / tb_dir]  # one writer only
    acc = EventAccumulator(
        str(tmp_path / tb_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}
    )
    acc.Reload()
    flushes = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in losses] == flushes
    for step, value in losses:
        window = range(step - LOG_EVERY + 1, step + 1)
        want = np.mean([loss_of(r, s) for r in (0, 1) for s in window])  # from every raw input
        assert value == pytest.approx(want, rel=1e-6)
    assert [e.value for e in acc.Scalars("data/samples")] == [2 * 8 * LOG_EVERY] * len(flushes)

    # TensorBoard and the local run log hold the same rows
    local = {row["step"]: row for row in distlog.read_metrics(tmp_path / "local" / "tb")}
    for step, value in losses:
        assert local[step]["train/loss"] == pytest.approx(value, rel=1e-6)

    (image,) = acc.Images("val/sample")
    assert image.step == STEPS and (image.height, image.width) == (4, 5)
    (config,) = acc.Tensors("config/text_summary")
    assert '"lr": 0.1' in config.tensor_proto.string_val[0].decode()


class _Disabled(TensorBoardLoggerMixin):
    pass


def test_disabled_logging_opens_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = LoggerConfigMixin(
        experiment="off", logging_parameters=LoggingParameters(enabled=False)
    )
    trainer = _Disabled(config)
    trainer.log_scalar("a", 1.0)
    assert trainer.tensorboard_sink is None and trainer.writer is None
    trainer.finish()
    assert not (tmp_path / "runs").exists()


def _writer_after_finish(rank: int, root: str) -> tuple[str | None, str | None]:
    os.chdir(root)
    config = LoggerConfigMixin(
        experiment="tbfin", logging_parameters=LoggingParameters(run_dir="local/tbfin")
    )
    trainer = Trainer(config)
    before = type(trainer.writer).__name__ if trainer.writer is not None else None
    trainer.log_scalar("x", float(rank))
    trainer.flush_logs(1)
    trainer.finish()
    after = trainer.writer  # the seed's guard `if self.writer is None: return`, on every rank
    return before, (type(after).__name__ if after is not None else None)


@pytest.mark.slow
def test_writer_is_none_on_every_rank_once_finished(tmp_path):
    results = run_ranks(_writer_after_finish, 2, str(tmp_path), timeout=120)
    assert results == [("SummaryWriter", None), (None, None)]
    (row,) = distlog.read_metrics(tmp_path / "local" / "tbfin")
    assert row["x"] == 0.5


def test_writer_is_none_once_finished_in_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = LoggerConfigMixin(experiment="one", logging_parameters=LoggingParameters(run_dir="r"))
    trainer = Trainer(config)
    assert type(trainer.writer).__name__ == "SummaryWriter"
    trainer.finish()
    assert trainer.writer is None


def _launch(steps: int) -> Path:
    config = LoggerConfigMixin(project="p", experiment="e")
    trainer = Trainer(config)
    for step in range(1, steps + 1):
        trainer.log_scalar("train/loss", float(step))
        trainer.global_step = step
        trainer.flush_logs(step)
    trainer.finish()
    return trainer.tensorboard_dir


def test_each_launch_is_its_own_tensorboard_run(tmp_path, monkeypatch):
    """TensorBoard merges the event files of one folder into one run: with every launch in
    runs/{experiment}, a second launch's curve went back over the first's (2..4, then 2..3).
    (Named after the run directory only, runs with run directories of the same name shared a
    folder again.)"""
    monkeypatch.chdir(tmp_path)
    first, second = _launch(4), _launch(3)
    assert first != second and first.parent.parent == second.parent.parent == Path("runs/p/e")
    for folder, steps in ((first, [1, 2, 3, 4]), (second, [1, 2, 3])):
        acc = EventAccumulator(str(tmp_path / folder), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == steps


def test_a_resumed_run_hides_what_the_interrupted_attempt_wrote_past_its_run_log(
    tmp_path, monkeypatch
):
    """The interrupted attempt's TensorBoard sink wrote step 5, which never reached
    metrics.jsonl: the resumed run writes step 5 again, and TensorBoard must show its value
    once, not both (purge_step)."""
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.chdir(tmp_path)
    folder = _launch(4)
    with SummaryWriter(str(folder)) as writer:  # the attempt's last row, lost from the run log
        writer.add_scalar("train/loss", 99.0, 5)
    config = LoggerConfigMixin(
        project="p", experiment="e", logging_parameters=LoggingParameters(resume_from="latest")
    )
    trainer = Trainer(config)
    assert trainer.tensorboard_dir == folder
    for step in (5, 6):
        trainer.log_scalar("train/loss", float(step))
        trainer.global_step = step
        trainer.flush_logs(step)
    trainer.finish()
    acc = EventAccumulator(str(tmp_path / folder), size_guidance={"scalars": 0})
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert got == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 6.0)]


def test_runs_whose_directories_share_a_name_keep_their_own_events(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = []
    for seed in (0, 1):
        params = LoggingParameters(run_dir=f"seed{seed}/logs")
        trainer = Trainer(LoggerConfigMixin(experiment="exp", logging_parameters=params))
        trainer.log_scalar("train/loss", float(seed))
        trainer.flush_logs(1)
        trainer.finish()
        dirs.append(trainer.tensorboard_dir)
    assert dirs == [Path("seed0/logs/tensorboard"), Path("seed1/logs/tensorboard")]
    for seed, folder in enumerate(dirs):
        acc = EventAccumulator(str(tmp_path / folder), size_guidance={"scalars": 0})
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, float(seed))]
