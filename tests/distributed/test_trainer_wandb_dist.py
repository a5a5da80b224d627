"""BaseTrainer + WandBLoggerMixin on 2 real gloo ranks, with real wandb offline.

Each rank records the raw samples it logged; the parent computes every row with the reference
reductions and compares them with what wandb wrote (read back from the .wandb file) and with the
local run log.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from dist_harness import RankPool
from reference import assert_rows_close, reference_row
from torch.utils.data import DataLoader, TensorDataset
from wandb_helpers import wandb_env

import distlog
from distlog.mixins import (
    LoggerConfigMixin,
    LoggerMixin,
    LoggingParameters,
    WandBLoggerConfigMixin,
    WandBLoggerMixin,
    WandbLoggingParameters,
)
from distlog.trainer import BaseTrainer, BaseTrainerConfig, Callback

pytest.importorskip("wandb")
from distlog.wandb_offline import find_run_dirs, read_run  # noqa: E402

pytestmark = pytest.mark.slow

LOG_EVERY = 3
MAX_STEPS = 9


class RecordingMixin:
    """Keeps the raw (key, value, reduce, weight) samples of each flush window on this rank."""

    def record(self, key, value, reduce="mean", weight=1.0):
        self.__dict__.setdefault("_pending", []).append((key, float(value), reduce, float(weight)))

    def flush_logs(self, step=None):
        row = super().flush_logs(step)
        self.__dict__.setdefault("windows", []).append(
            (self.global_step if step is None else step, self.__dict__.pop("_pending", []))
        )
        return row


class Regression(RecordingMixin):
    """The trainer body shared by the wandb and the local-only variants."""

    def configure(self):
        self.model = torch.nn.Linear(3, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr)
        self.log_config(self.config)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(96, 3, generator=g)
        y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(96, 1, generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=self.config.batch_size, shuffle=True)

    def val_dataloader(self):
        g = torch.Generator().manual_seed(2)
        x = torch.randn(24, 3, generator=g)
        return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=6)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.config.fail_at_step:
            raise RuntimeError(f"deliberate failure at step {self.global_step}")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        n = len(x) + self.world.rank  # ranks differ, so a wrong reduction shows
        self.log_scalar("train/loss", loss)
        self.record("train/loss", loss.item())
        self.log_scalar("data/samples", n, reduce="sum")
        self.record("data/samples", n, "sum")
        self.log_scalar("data/x_max", x.max(), reduce="max")
        self.record("data/x_max", x.max().item(), "max")
        self.log_scalar("data/x_min", x.min(), reduce="min")
        self.record("data/x_min", x.min().item(), "min")
        self.log_scalar("train/wloss", loss.detach() * (1 + self.world.rank), weight=n)
        self.record("train/wloss", loss.item() * (1 + self.world.rank), "mean", n)
        self.log_dict(
            {"opt/lr": self.optimizer.param_groups[0]["lr"] * (self.world.rank + 1)}, reduce="last"
        )
        self.record("opt/lr", self.optimizer.param_groups[0]["lr"] * (self.world.rank + 1), "last")
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        val = torch.nn.functional.mse_loss(self.model(x), y)
        self.log_scalar("val/loss", val, weight=len(x))
        self.record("val/loss", val.item(), "mean", len(x))


@dataclass(kw_only=True)
class WandbConfig(BaseTrainerConfig, WandBLoggerConfigMixin):
    lr: float = 0.05
    batch_size: int = 4
    fail_at_step: int = -1


@dataclass(kw_only=True)
class LocalConfig(BaseTrainerConfig, LoggerConfigMixin):
    lr: float = 0.05
    batch_size: int = 4
    fail_at_step: int = -1


class WandbTrainer(Regression, BaseTrainer, WandBLoggerMixin):
    pass


class LocalTrainer(Regression, BaseTrainer, LoggerMixin):
    pass


class CountingCallback(Callback):
    def __init__(self):
        self.calls = []

    def on_train_batch_end(self, trainer, batch, batch_idx, outputs):
        self.calls.append(("batch_end", trainer.global_step))

    def on_train_epoch_end(self, trainer):
        self.calls.append(("epoch_end", trainer.current_epoch))

    def on_validation_epoch_end(self, trainer):
        self.calls.append(("val_end", trainer.global_step))

    def on_train_end(self, trainer):
        self.calls.append(("train_end", trainer.global_step))


def train_on_rank(rank, root, kind, overrides):
    os.chdir(root)  # default run dirs land in the test's tmp dir
    cb = CountingCallback()
    if kind == "wandb":
        params = WandbLoggingParameters(
            log_every_n_steps=LOG_EVERY,
            run_dir=str(Path(root) / "run"),
            project="distproj",
            group="g1",
            tags=["t"],
            dir=str(Path(root) / "wandb_dir"),
            **overrides.pop("params", {}),
        )
        config = WandbConfig(
            experiment="exp",
            max_steps=MAX_STEPS,
            max_epochs=2,
            logging_parameters=params,
            callbacks=[cb],
            **overrides,
        )
        trainer_cls = WandbTrainer
    else:
        params = LoggingParameters(log_every_n_steps=LOG_EVERY, run_dir=str(Path(root) / "run"))
        config = LocalConfig(
            experiment="exp",
            max_steps=MAX_STEPS,
            max_epochs=2,
            logging_parameters=params,
            callbacks=[cb],
            **overrides,
        )
        trainer_cls = LocalTrainer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = trainer_cls(config)
        error = None
        try:
            trainer.fit()
        except RuntimeError as exc:
            error = str(exc)
    info = {
        "windows": trainer.windows if hasattr(trainer, "windows") else [],
        "calls": cb.calls,
        "is_ddp": isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel),
        "warnings": [str(w.message) for w in caught],
        "error": error,
        "wandb_run": None,
        "wandb_imported_run": None,
    }
    if kind == "wandb":
        import wandb

        info["wandb_run"] = trainer.wandb_run.id if trainer.wandb_run is not None else None
        info["wandb_imported_run"] = wandb.run is not None
    return info


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two long-lived gloo ranks: torch, wandb and the optimizer stack are imported once."""
    ranks = RankPool(2, env=wandb_env(tmp_path_factory.mktemp("wandb_home")))
    yield ranks
    ranks.close()


def expected_rows(results):
    """Reference rows by step, from every rank's raw samples (windows line up across ranks)."""
    windows = [r["windows"] for r in results]
    assert len({len(w) for w in windows}) == 1
    rows: dict[int, dict[str, float]] = {}
    for per_rank in zip(*windows, strict=True):
        steps = {step for step, _ in per_rank}
        assert len(steps) == 1
        row = reference_row([samples for _, samples in per_rank])
        if row:
            rows.setdefault(steps.pop(), {}).update(row)
    return rows


def test_two_ranks_exact_rows_in_one_wandb_run(pool, tmp_path):
    results = pool.run(train_on_rank, str(tmp_path), "wandb", {}, timeout=120)
    want = expected_rows(results)
    # an epoch is 12 steps per rank; max_steps=9 stops inside it: flushes at 3, 6, 9, then the
    # validation that ends the epoch flushes at step 9 again
    assert sorted(want) == [3, 6, 9]
    assert "val/loss" in want[9]

    [run_dir] = find_run_dirs(tmp_path / "wandb_dir")  # one run for the whole job
    run = read_run(run_dir)
    assert run.exit_code == 0
    assert (run.project, run.group, run.name, run.tags) == ("distproj", "g1", "exp", ["t"])
    assert run.run_id == results[0]["wandb_run"]
    got = run.rows_by_step()
    assert sorted(got) == sorted(want)
    for step, row in want.items():
        assert_rows_close(got[step], row)

    # the local run log holds the same rows
    local = {}
    for r in distlog.read_metrics(tmp_path / "run"):
        local.setdefault(r["step"], {}).update(
            {k: v for k, v in r.items() if k not in ("step", "time")}
        )
    assert sorted(local) == sorted(want)
    for step, row in want.items():
        assert_rows_close(local[step], row)

    # config: the trainer's dataclass, as wandb config
    assert run.config["lr"] == 0.05 and run.config["experiment"] == "exp"
    assert run.config["max_steps"] == MAX_STEPS
    assert run.config["logging_parameters"]["log_every_n_steps"] == LOG_EVERY
    # only rank 0 made a run; the model was DDP-wrapped on both
    assert results[1]["wandb_run"] is None and results[1]["wandb_imported_run"] is False
    assert all(r["is_ddp"] for r in results)
    # callback hooks: every optimizer step, epoch end, validation end, train end
    calls = results[0]["calls"]
    assert [c for c in calls if c[0] == "batch_end"] == [("batch_end", s) for s in range(1, 10)]
    assert ("val_end", 9) in calls and calls[-1] == ("train_end", 9)
    # one id for the whole run: the local run log's run.json names the wandb run, no other file
    info = distlog.read_run_info(tmp_path / "run")
    assert info is not None and info["id"] == run.run_id and "wandb_id" not in info
    assert not (tmp_path / "run" / "wandb-run.json").exists()
    assert not (tmp_path / "runs").exists()


def test_failing_job_keeps_flushed_rows_and_records_exit_code(pool, tmp_path):
    results = pool.run(train_on_rank, str(tmp_path), "wandb", {"fail_at_step": 7}, timeout=120)
    assert all("deliberate failure at step 7" in r["error"] for r in results)
    [run_dir] = find_run_dirs(tmp_path / "wandb_dir")
    run = read_run(run_dir)
    assert run.exit_code == 1
    want = expected_rows(results)
    got = run.rows_by_step()
    assert sorted(got) == [3, 6]
    for step in (3, 6):
        assert_rows_close(got[step], want[step])


def test_wandb_init_timeout_falls_back_to_the_local_log(pool, tmp_path):
    """A wandb.init slower than init_timeout: rank 0 warns, nobody stalls, the run log is whole."""
    results = pool.run(
        train_on_rank, str(tmp_path), "wandb", {"params": {"init_timeout": 0.001}}, timeout=120
    )
    assert any(
        "did not finish within" in w and "local run log" in w for w in results[0]["warnings"]
    ), results[0]["warnings"]
    assert results[0]["wandb_run"] is None
    want = expected_rows(results)
    local = {}
    for r in distlog.read_metrics(tmp_path / "run"):
        local.setdefault(r["step"], {}).update(
            {k: v for k, v in r.items() if k not in ("step", "time")}
        )
    assert sorted(local) == sorted(want) == [3, 6, 9]
    for step, row in want.items():
        assert_rows_close(local[step], row)


def test_logger_mixin_without_wandb_writes_the_local_log(pool, tmp_path):
    results = pool.run(train_on_rank, str(tmp_path), "local", {}, timeout=120)
    want = expected_rows(results)
    local = {}
    for r in distlog.read_metrics(tmp_path / "run"):
        local.setdefault(r["step"], {}).update(
            {k: v for k, v in r.items() if k not in ("step", "time")}
        )
    assert sorted(local) == sorted(want) == [3, 6, 9]
    for step, row in want.items():
        assert_rows_close(local[step], row)
    assert not (tmp_path / "wandb_dir").exists()
