"""The mixins and the harness in one process: local run log, wandb offline, bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from wandb_helpers import apply_wandb_env, reset_wandb

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


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield apply_wandb_env(monkeypatch, tmp_path)
    reset_wandb()


def rows_by_step(run_dir):
    out: dict[int, dict] = {}
    for row in distlog.read_metrics(run_dir):
        out.setdefault(row["step"], {}).update(
            {k: v for k, v in row.items() if k not in ("step", "time")}
        )
    return out


# ------------------------------------------------------------------ a plain loop with the mixin
@dataclass(kw_only=True)
class LoopConfig(LoggerConfigMixin):
    pass


class Loop(LoggerMixin):
    """LoggerMixin without the harness: a user's own loop."""


def test_logger_mixin_in_a_hand_written_loop(env, tmp_path):
    loop = Loop(LoopConfig(experiment="hand", project="p"))
    assert loop.run_dir == Path("runs/p/hand")  # relative to the working directory
    values = [0.5, 1.5, 4.0]
    for step, v in enumerate(values, start=1):
        loop.global_step = step
        loop.log_scalar("loss", v)
        loop.log_dict({"tokens": 10 * step}, reduce="sum")
        loop.flush_logs()
    loop.log_config({"model": {"width": 8}})
    loop.finish()
    got = rows_by_step("runs/p/hand")
    assert got == {s: {"loss": v, "tokens": 10.0 * s} for s, v in enumerate(values, start=1)}
    assert (tmp_path / "runs/p/hand/config.json").is_file()
    with pytest.raises(distlog.LoggerClosedError):
        loop.log_scalar("loss", 1.0)  # logging after finish is a clear error
    loop.finish()  # idempotent


def test_disabled_logging_is_a_no_op(env, tmp_path):
    loop = Loop(LoopConfig(experiment="off", logging_parameters=LoggingParameters(enabled=False)))
    loop.log_scalar("loss", 1.0)
    loop.log_images(torch.zeros(1, 3, 4, 4), desc="x")
    loop.log_model([torch.nn.Linear(1, 1)])
    assert loop.flush_logs() is None
    loop.finish()
    assert loop.logger is None
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ the harness
@dataclass(kw_only=True)
class TrainConfig(BaseTrainerConfig, LoggerConfigMixin):
    lr: float = 0.1
    n: int = 32
    batch_size: int = 8
    restored_step: int = 0
    bad_output: str = ""


class Linear:
    """Trainer body: learns y = 2x on n samples."""

    def configure(self):
        self.model = torch.nn.Linear(1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr)
        self.global_step = self.config.restored_step  # what a checkpoint restore does
        self.seen = []

    def train_dataloader(self):
        x = torch.linspace(-1, 1, self.config.n).unsqueeze(1)
        return DataLoader(TensorDataset(x, 2 * x), batch_size=self.config.batch_size)

    def val_dataloader(self):
        x = torch.linspace(-1, 1, 8).unsqueeze(1)
        return DataLoader(TensorDataset(x, 2 * x), batch_size=4)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.log_scalar("train/loss", loss)
        self.seen.append((self.current_epoch, batch_idx, loss.item()))
        if self.config.bad_output == "no_loss":
            return {"los": loss}
        if self.config.bad_output == "detached":
            return {"loss": loss.detach()}
        return {"loss": loss}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log_scalar("val/loss", torch.nn.functional.mse_loss(self.model(x), y))


class LocalTrainer(Linear, BaseTrainer, LoggerMixin):
    pass


class Hooks(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_train_epoch_start(self, trainer):
        self.calls.append(f"epoch_start {trainer.current_epoch}")

    def on_train_epoch_end(self, trainer):
        self.calls.append(f"epoch_end {trainer.current_epoch}")

    def on_validation_epoch_end(self, trainer):
        self.calls.append(f"val_end {trainer.global_step}")

    def on_train_end(self, trainer):
        self.calls.append("train_end")

    def on_exception(self, trainer, exception):
        self.calls.append(f"exception {type(exception).__name__}")


def test_epochs_steps_validation_and_hooks(env, tmp_path):
    hooks = Hooks()
    cfg = TrainConfig(
        experiment="e",
        max_epochs=2,
        val_every_n_epochs=2,
        callbacks=[hooks],
        logging_parameters=LoggingParameters(log_every_n_steps=3, run_dir="r"),
    )
    trainer = LocalTrainer(cfg)
    trainer.fit()
    assert trainer.global_step == 8 and trainer.current_epoch == 2  # 4 batches x 2 epochs
    assert hooks.calls == [
        "fit_start",
        "epoch_start 0",
        "epoch_end 0",
        "epoch_start 1",
        "epoch_end 1",
        "val_end 8",
        "train_end",
    ]
    rows = rows_by_step("r")
    assert sorted(rows) == [3, 6, 8]  # every 3 steps, then validation (+ leftovers) at 8
    losses = [loss for _, _, loss in trainer.seen]
    assert rows[3]["train/loss"] == pytest.approx(sum(losses[0:3]) / 3)
    assert rows[6]["train/loss"] == pytest.approx(sum(losses[3:6]) / 3)
    assert rows[8]["train/loss"] == pytest.approx(sum(losses[6:8]) / 2)
    assert "val/loss" in rows[8]
    assert rows[6]["train/loss"] < rows[3]["train/loss"]  # it learns


def test_max_steps_and_a_restored_step(env):
    cfg = TrainConfig(
        experiment="e",
        max_steps=7,
        restored_step=5,
        logging_parameters=LoggingParameters(log_every_n_steps=2, run_dir="r"),
    )
    trainer = LocalTrainer(cfg)
    trainer.fit()
    assert trainer.global_step == 7 and len(trainer.seen) == 2
    assert sorted(rows_by_step("r")) == [6, 7]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("no_loss", r"must return a dict with a 'loss' tensor.*\['los'\]"),
        ("detached", r"'loss' must be a one-element tensor that requires grad"),
    ],
)
def test_bad_training_step_output_names_the_problem_and_finishes_the_log(env, bad, message):
    hooks = Hooks()
    cfg = TrainConfig(
        experiment="e",
        max_steps=4,
        bad_output=bad,
        callbacks=[hooks],
        logging_parameters=LoggingParameters(log_every_n_steps=1, run_dir="r"),
    )
    trainer = LocalTrainer(cfg)
    with pytest.raises(distlog.LogTypeError, match=message):
        trainer.fit()
    assert hooks.calls[-1] == "exception LogTypeError"
    assert trainer.logger.closed  # finished on the way out
    with pytest.raises(distlog.LoggerClosedError):
        trainer.log_scalar("x", 1.0)


def test_bad_configs():
    with pytest.raises(ValueError, match="log_every_n_steps must be >= 1"):
        LoggingParameters(log_every_n_steps=0)
    with pytest.raises(TypeError, match="log_every_n_steps must be an int"):
        LoggingParameters(log_every_n_steps=2.5)
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=-1)
    with pytest.raises(TypeError, match="Callback instances"):
        TrainConfig(callbacks=[object()])
    with pytest.raises(TypeError, match="expects a BaseTrainerConfig"):
        LocalTrainer(LoopConfig())


def test_configure_must_build_model_and_optimizer(env):
    class NoOptimizer(LocalTrainer):
        def configure(self):
            self.model = torch.nn.Linear(1, 1)

    with pytest.raises(TypeError, match="self.optimizer"):
        NoOptimizer(TrainConfig(logging_parameters=LoggingParameters(run_dir="r")))


def test_log_model_bad_arguments(env):
    trainer = LocalTrainer(TrainConfig(logging_parameters=LoggingParameters(run_dir="r")))
    with pytest.raises(ValueError, match="log='everything'"):
        trainer.log_model(log="everything")
    with pytest.raises(ValueError, match="log_freq=0"):
        trainer.log_model(log_freq=0)
    trainer.log_model()  # no tracker that watches: nothing to do, no error
    trainer.finish()


# ------------------------------------------------------------------ wandb through the mixin
@dataclass(kw_only=True)
class WandbTrainConfig(BaseTrainerConfig, WandBLoggerConfigMixin):
    lr: float = 0.1
    n: int = 32
    batch_size: int = 8
    restored_step: int = 0
    bad_output: str = ""


class WandbFirst(Linear, WandBLoggerMixin, BaseTrainer):
    """The mixin before the harness: the other base order must work too."""


class WandbLast(Linear, BaseTrainer, WandBLoggerMixin):
    pass


@pytest.mark.parametrize("trainer_cls", [WandbLast, WandbFirst])
def test_wandb_mixin_in_either_base_order(env, tmp_path, trainer_cls):
    pytest.importorskip("wandb")
    from distlog.wandb_offline import find_run_dirs, read_run

    params = WandbLoggingParameters(log_every_n_steps=2, run_dir="r", tags=["x"])
    trainer = trainer_cls(
        WandbTrainConfig(experiment="order", max_steps=4, logging_parameters=params)
    )
    trainer.log_model(log="all", log_freq=1)
    trainer.log_config(trainer.config)
    trainer.fit()
    [run_dir] = find_run_dirs(env["WANDB_DIR"])
    run = read_run(run_dir)
    assert run.exit_code == 0 and run.name == "order" and run.project == "distlog"
    assert {k: v["train/loss"] for k, v in run.rows_by_step().items() if "train/loss" in v} == {
        k: v["train/loss"] for k, v in rows_by_step("r").items() if "train/loss" in v
    }
    keys = set().union(*run.history)
    assert any(k.startswith("gradients/") and k.endswith("weight") for k in keys), sorted(keys)
    assert run.config["lr"] == 0.1


def test_wandb_mixin_mode_from_logging_parameters(env):
    pytest.importorskip("wandb")
    from distlog.wandb_offline import find_run_dirs

    params = WandbLoggingParameters(mode="disabled", run_dir="r")
    trainer = WandbLast(WandbTrainConfig(max_steps=2, logging_parameters=params))
    trainer.fit()
    assert find_run_dirs(env["WANDB_DIR"]) == []
    assert sorted(rows_by_step("r")) == [2]


def test_wandb_init_failure_warns_and_keeps_the_local_log(env):
    pytest.importorskip("wandb")
    params = WandbLoggingParameters(mode="online", run_dir="r", init_timeout=30)  # no API key
    with pytest.warns(UserWarning, match=r"wandb.init failed.*local run log"):
        trainer = WandbLast(WandbTrainConfig(max_steps=2, logging_parameters=params))
    assert trainer.wandb_run is None
    trainer.fit()
    assert sorted(rows_by_step("r")) == [2]


def test_without_wandb_installed(tmp_path):
    """LoggerMixin runs with wandb unimportable; WandBLoggerMixin says which extra to install."""
    from dist_harness import subprocess_env

    code = textwrap.dedent(
        """
        import sys
        sys.modules["wandb"] = None  # as if it were not installed
        from dataclasses import dataclass
        import distlog
        from distlog.mixins import (LoggerConfigMixin, LoggerMixin, WandBLoggerConfigMixin,
                                    WandBLoggerMixin)

        @dataclass(kw_only=True)
        class C(LoggerConfigMixin): ...

        class L(LoggerMixin): ...

        loop = L(C(experiment="nowandb"))
        loop.global_step = 1
        loop.log_scalar("loss", 3.0)
        loop.flush_logs()
        loop.finish()
        print("ROWS", distlog.read_metrics("runs/distlog/nowandb"))

        @dataclass(kw_only=True)
        class W(WandBLoggerConfigMixin): ...

        class WL(WandBLoggerMixin): ...

        try:
            WL(W())
        except ImportError as exc:
            print("IMPORT-ERROR", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ROWS [{'step': 1," in out.stdout and "'loss': 3.0}]" in out.stdout
    assert "IMPORT-ERROR" in out.stdout and "distlog[wandb]" in out.stdout
    assert not (tmp_path / "wandb").exists()


def test_bad_logging_parameters_close_the_wandb_run_they_opened(env):
    pytest.importorskip("wandb")
    from distlog.wandb_offline import find_run_dirs, read_run

    params = WandbLoggingParameters(run_dir="r", nonfinite="explode")
    with pytest.raises(distlog.LogValueError, match="nonfinite='explode'"):
        WandbLast(WandbTrainConfig(max_steps=2, logging_parameters=params))
    [run_dir] = find_run_dirs(env["WANDB_DIR"])
    assert read_run(run_dir).exit_code == 1  # not left open
