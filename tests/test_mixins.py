"""The mixins and the harness in one process: local run log, wandb offline, bad input."""

from __future__ import annotations

import json
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
from distlog import runlog
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
    assert loop.run_dir.parent == Path("runs/p/hand")  # a run of its own, in the working dir
    values = [0.5, 1.5, 4.0]
    for step, v in enumerate(values, start=1):
        loop.global_step = step
        loop.log_scalar("loss", v)
        loop.log_dict({"tokens": 10 * step}, reduce="sum")
        loop.flush_logs()
    loop.log_config({"model": {"width": 8}})
    loop.finish()
    got = rows_by_step(loop.run_dir)
    assert got == {s: {"loss": v, "tokens": 10.0 * s} for s, v in enumerate(values, start=1)}
    assert (tmp_path / loop.run_dir / "config.json").is_file()
    with pytest.raises(distlog.LoggerClosedError):
        loop.log_scalar("loss", 1.0)  # logging after finish is a clear error
    loop.finish()  # idempotent


class StuckTrackerLoop(LoggerMixin):
    """A subclass adding a tracker (make_sinks, as the seed's custom logger) that hangs."""

    def make_sinks(self) -> list:
        from test_sink_lanes import StuckSink

        self.stuck = StuckSink(good=1)
        return [*super().make_sinks(), self.stuck]


def test_logging_parameters_sink_timeout_reaches_the_logger(env, tmp_path):
    params = LoggingParameters(sink_timeout=0.5)
    loop = StuckTrackerLoop(LoopConfig(experiment="stuck", logging_parameters=params))
    try:
        for step in range(1, 4):
            loop.log_scalar("loss", float(step))
            loop.flush_logs(step)
        with pytest.warns(UserWarning, match=r"StuckSink\.log_scalars for \d+ s has not returned"):
            loop.finish()  # gives up on the hung tracker after 0.5 s, not 300
        assert sorted(rows_by_step(loop.run_dir)) == [1, 2, 3]
    finally:
        loop.stuck.release.set()


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


@pytest.mark.slow  # starts a process
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
        print("ROWS", distlog.read_metrics(loop.run_dir))

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

    with pytest.raises(distlog.LogValueError, match="nonfinite must be one of.*'explode'"):
        WandbLoggingParameters(run_dir="r", nonfinite="explode")  # refused at build now
    params = WandbLoggingParameters(run_dir="r")
    params.nonfinite = "explode"  # changed after the build: the Logger refuses it
    with pytest.raises(distlog.LogValueError, match="nonfinite='explode'"):
        WandbLast(WandbTrainConfig(max_steps=2, logging_parameters=params))
    [run_dir] = find_run_dirs(env["WANDB_DIR"])
    assert read_run(run_dir).exit_code == 1  # not left open


# ------------------------------------------------------------------ one run id, in run.json
@pytest.fixture
def first_start(env, monkeypatch):
    """A fresh start: no restart count and no wandb id from the environment."""
    for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.mark.slow  # starts a process
def test_a_restart_continues_the_wandb_run_named_by_run_json(first_start, monkeypatch):
    pytest.importorskip("wandb")
    from distlog.wandb_offline import read_runs

    def start(**kwargs):
        params = WandbLoggingParameters(log_every_n_steps=2, run_dir="r")
        return WandbLast(WandbTrainConfig(experiment="again", logging_parameters=params, **kwargs))

    first = start(max_steps=4)
    run_id = first.logger.run_id
    assert first.wandb_run.id == run_id  # the logger's id, before the logger was built
    first.fit()

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun sets on a restart
    with pytest.warns(UserWarning, match=rf"resuming run {run_id}"):
        second = start(max_steps=8, restored_step=3)  # an older checkpoint: step 4 replayed
    assert second.logger.run_id == second.wandb_run.id == run_id
    with pytest.warns(UserWarning, match="step 4 is at or below step 4"):
        second.fit()  # flushes at 4 (not written again), 6, 7 (the epoch's end) and 8

    info = distlog.read_run_info("r")
    assert info["id"] == run_id and "wandb_id" not in info
    assert [(s["restart"], s["exit_code"]) for s in info["starts"]] == [(0, 0), (1, 0)]
    runs = read_runs(first_start["WANDB_DIR"])
    assert [r.run_id for r in runs] == [run_id, run_id]  # one wandb run, one folder per start
    assert [sorted(r.values("train/loss")) for r in runs] == [[2, 4], [6, 7, 8]]
    assert sorted(rows_by_step("r")) == [2, 4, 6, 7, 8]
    assert sorted(p.name for p in Path("r").iterdir()) == ["metrics.jsonl", "run.json"]


def test_an_explicit_id_wins_and_is_kept_for_a_restart(first_start, monkeypatch):
    pytest.importorskip("wandb")
    from distlog.wandb_offline import read_runs

    def start(**kwargs):
        params = WandbLoggingParameters(run_dir="r", **kwargs)
        trainer = WandbLast(WandbTrainConfig(logging_parameters=params))
        trainer.finish()
        return trainer

    first = start(id="explicit1")
    assert first.wandb_run.id == "explicit1" != first.logger.run_id
    info = distlog.read_run_info("r")
    assert info["id"] == first.logger.run_id and info["wandb_id"] == "explicit1"

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = start()  # the restart's config names no id: the recorded one continues
    assert second.wandb_run.id == "explicit1" and second.logger.run_id == first.logger.run_id

    monkeypatch.setenv("WANDB_RUN_ID", "fromenv2")  # an id from the environment is explicit too
    assert start().wandb_run.id == "fromenv2"
    assert distlog.read_run_info("r")["wandb_id"] == "fromenv2"
    assert [r.run_id for r in read_runs(first_start["WANDB_DIR"])] == ["explicit1"] * 2 + [
        "fromenv2"
    ]
    assert not Path("r/wandb-run.json").exists()


def test_a_legacy_wandb_run_json_is_read_on_a_restart_and_not_written(first_start, monkeypatch):
    """A run directory from an earlier distlog: its wandb id lives in wandb-run.json only."""
    pytest.importorskip("wandb")
    from distlog.wandb_offline import read_runs

    def start(run_dir):
        trainer = WandbLast(
            WandbTrainConfig(logging_parameters=WandbLoggingParameters(run_dir=run_dir))
        )
        trainer.finish()
        return trainer

    # what the first attempt of an earlier version left: run.json with the logger's id, and
    # the wandb run's own (different) id in wandb-run.json
    first = WandbLast(
        WandbTrainConfig(logging_parameters=WandbLoggingParameters(run_dir="r", id="legacy01"))
    )
    first.finish()
    own_id = first.logger.run_id
    info = distlog.read_run_info("r")
    del info["wandb_id"]
    Path("r/run.json").write_text(json.dumps(info))
    legacy = Path("r/wandb-run.json")
    legacy.write_text(json.dumps({"id": "legacy01"}) + "\n")
    stamp = legacy.stat().st_mtime_ns

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    second = start("r")
    assert second.wandb_run.id == "legacy01" and second.logger.run_id == own_id
    info = distlog.read_run_info("r")
    assert info["wandb_id"] == "legacy01" and len(info["starts"]) == 2  # now in run.json
    assert legacy.stat().st_mtime_ns == stamp  # read, never written

    legacy.unlink()  # run.json alone is enough from now on
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert start("r").wandb_run.id == "legacy01"
    assert [r.run_id for r in read_runs(first_start["WANDB_DIR"])] == ["legacy01"] * 3

    # only a restart reads it: a fresh start in such a directory is the run's own id
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    Path("fresh").mkdir()
    Path("fresh/wandb-run.json").write_text(json.dumps({"id": "legacy02"}) + "\n")
    fresh = start("fresh")
    assert fresh.wandb_run.id == fresh.logger.run_id != "legacy02"


# ------------------------------------------------------------------ dataloaders as attributes
class SeedStyleTable(Linear, BaseTrainer, LoggerMixin):
    """The seed's table example: a hook iterates ``self.val_dataloader`` as an attribute."""

    def on_validation_epoch_end(self):
        self.val_batches = [len(x) for x, _ in self.val_dataloader]


class AttributeLoaders(Linear, BaseTrainer, LoggerMixin):
    """Loaders set as attributes in configure, no methods."""

    train_dataloader = None  # type: ignore[assignment]
    val_dataloader = None  # type: ignore[assignment]

    def configure(self):
        super().configure()
        x = torch.linspace(-1, 1, 16).unsqueeze(1)
        self.train_dataloader = DataLoader(TensorDataset(x, 2 * x), batch_size=4)
        self.val_dataloader = DataLoader(TensorDataset(x[:6], 2 * x[:6]), batch_size=3)


def test_dataloaders_are_attributes_after_construction(env, tmp_path):
    trainer = SeedStyleTable(TrainConfig(experiment="seedtable", max_epochs=1))
    assert isinstance(trainer.val_dataloader, DataLoader)  # the method's result, kept
    assert isinstance(trainer.train_dataloader, DataLoader)
    trainer.fit()
    assert trainer.val_batches == [4, 4]  # the hook iterated the attribute
    assert len(trainer.seen) == 4  # 32 samples, batches of 8

    other = AttributeLoaders(TrainConfig(experiment="attrs", max_epochs=1))
    other.fit()
    assert len(other.seen) == 4  # 16 samples, batches of 4
    got = rows_by_step(other.run_dir)
    assert "val/loss" in got[max(got)]  # validation ran over the attribute loader


# ------------------------------------------------------------------ a run per launch
def test_each_launch_is_a_run_of_its_own_and_resume_is_explicit(env, tmp_path):
    """The same trainer launched twice: two run directories, two wandb runs; resume_from
    continues one on purpose (same directory, same id, same wandb run)."""
    pytest.importorskip("wandb")
    from distlog.wandb_offline import find_run_dirs, read_run

    def launch(**params):
        lp = WandbLoggingParameters(log_every_n_steps=2, **params)
        trainer = WandbLast(
            WandbTrainConfig(experiment="twice", max_steps=4, logging_parameters=lp)
        )
        trainer.fit()
        return trainer.run_dir, runlog.read_run_info(trainer.run_dir)

    (first, info1), (second, info2) = launch(), launch()
    assert first != second and first.parent == second.parent == Path("runs/distlog/twice")
    assert info1["id"] != info2["id"]
    one_launch = [r["step"] for r in distlog.read_metrics(first)]
    assert one_launch == sorted(one_launch) and set(one_launch) == {2, 4}  # (4: the last flush)
    assert [r["step"] for r in distlog.read_metrics(second)] == one_launch  # never appended
    wandb_ids = sorted(read_run(d).run_id for d in find_run_dirs(env["WANDB_DIR"]))
    assert wandb_ids == sorted([info1["id"], info2["id"]])  # a new wandb run per launch

    resumed, info3 = launch(resume_from=info1["id"])
    assert resumed == first and info3["id"] == info1["id"] and len(info3["starts"]) == 2
    assert [r["step"] for r in distlog.read_metrics(first)] == one_launch  # replayed, not rewritten
    assert len(find_run_dirs(env["WANDB_DIR"], run_id=info1["id"])) == 2  # continued
    with pytest.raises(distlog.RunDirError, match="resume_from='nope'"):
        launch(resume_from="nope")

    # distlog show lists the experiment's runs
    out = subprocess.run(
        [sys.executable, "-m", "distlog.cli", "show", "runs/distlog"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert info1["id"] in out and info2["id"] in out and "2 runs" in out


# ------------------------------------------------------------------ config values checked at build
@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: LoggingParameters(enabled="false"), TypeError, r"\.enabled must be True or False"),
        (lambda: LoggingParameters(timeout="300"), TypeError, r"\.timeout must be a number"),
        (lambda: LoggingParameters(timeout=-1), ValueError, r"\.timeout must be .* > 0, got -1"),
        (lambda: LoggingParameters(timeout=float("nan")), ValueError, r"\.timeout"),
        (lambda: LoggingParameters(nonfinite="bogus"), ValueError, r"\.nonfinite .*'bogus'"),
        (lambda: LoggingParameters(sink_timeout=0), ValueError, r"\.sink_timeout must be"),
        (lambda: LoggingParameters(sink_timeout="1"), TypeError, r"\.sink_timeout must be a"),
        (lambda: LoggingParameters(run_dir=123), TypeError, r"\.run_dir must be a path"),
        (lambda: LoggingParameters(console=1), TypeError, r"\.console must be True or False"),
        (lambda: LoggingParameters(resume_from=3), TypeError, r"\.resume_from must be a string"),
        (lambda: WandbLoggingParameters(tags="a,b"), TypeError, r"\.tags must be a list.*'a,b'"),
        (lambda: WandbLoggingParameters(tags=["a", 1]), TypeError, r"\.tags must hold"),
        (lambda: WandbLoggingParameters(init_timeout=0), ValueError, r"\.init_timeout"),
        (lambda: WandbLoggingParameters(settings=["x"]), TypeError, r"\.settings must be"),
        (lambda: WandbLoggingParameters(project=5), TypeError, r"\.project must be a string"),
        (lambda: TrainConfig(val_every_n_epochs=True), TypeError, r"val_every_n_epochs must be"),
        (lambda: TrainConfig(val_every_n_epochs=0), ValueError, r"val_every_n_epochs must be >="),
        (lambda: TrainConfig(seed="x"), TypeError, r"config\.seed must be an int or None"),
        (lambda: TrainConfig(find_unused_parameters="yes"), TypeError, r"find_unused_parameters"),
        (lambda: TrainConfig(experiment=None), TypeError, r"config\.experiment must be a string"),
        (lambda: TrainConfig(logging_parameters={"run_dir": "r"}), TypeError, "logging_param"),
    ],
)
def test_bad_config_values_raise_when_the_config_is_built(make, error, message):
    with pytest.raises(error, match=message) as caught:
        make()
    assert isinstance(caught.value, distlog.DistlogError)


def test_good_config_values_are_kept_or_normalised(tmp_path):
    params = WandbLoggingParameters(run_dir=tmp_path / "r", tags=("a", "b"), timeout=5)
    assert params.run_dir == str(tmp_path / "r") and params.tags == ["a", "b"]
    assert TrainConfig(seed=None, callbacks=(Hooks(),)).callbacks[0].__class__ is Hooks


def test_wandb_tags_reach_wandb_as_given_and_a_string_is_refused(env):
    pytest.importorskip("wandb")
    from distlog.sinks.wandb import WandbSink
    from distlog.wandb_offline import find_run_dirs, read_run

    with pytest.raises(TypeError, match=r"tags='a,b'.*tags=\['a,b'\]"):
        WandbSink(project="p", tags="a,b", mode="offline")
    assert find_run_dirs(env["WANDB_DIR"]) == []  # refused before wandb.init
    params = WandbLoggingParameters(run_dir="r", tags=("a,b", "c"))
    trainer = WandbLast(WandbTrainConfig(max_steps=2, logging_parameters=params))
    trainer.fit()
    [run_dir] = find_run_dirs(env["WANDB_DIR"])
    assert read_run(run_dir).tags == ["a,b", "c"]


def test_wandb_settings_wandb_rejects(env):
    pytest.importorskip("wandb")
    from distlog.sinks.wandb import WandbInitError, WandbSink
    from distlog.wandb_offline import find_run_dirs

    params = WandbLoggingParameters(run_dir="r", settings={"nonexistent_setting": 1})
    with pytest.raises(distlog.LogValueError, match=r"settings.*nonexistent_setting"):
        WandbLast(WandbTrainConfig(max_steps=2, logging_parameters=params))
    # a sink built directly: the documented "wandb could not start" error, which the mixin
    # turns into a warning (the job goes on with the local run log)
    with pytest.raises(WandbInitError, match=r"wandb.Settings rejected.*console"):
        WandbSink(project="p", mode="offline", settings={"console": 5})
    assert find_run_dirs(env["WANDB_DIR"]) == []


def test_wandb_mixin_given_plain_logging_parameters(env):
    pytest.importorskip("wandb")

    with pytest.raises(TypeError, match=r"WandBLoggerMixin\) needs.*got LoggingParameters"):
        WandbLast(WandbTrainConfig(logging_parameters=LoggingParameters(run_dir="r")))
    assert not Path("r").exists()  # nothing was built
    # logging switched off: nothing is opened, so plain LoggingParameters are fine
    off = WandbLast(WandbTrainConfig(logging_parameters=LoggingParameters(enabled=False)))
    off.fit()


def test_wandb_and_mlflow_mixins_together_are_refused(env):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from distlog.mixins import MLflowLoggerConfigMixin, MLflowLoggerMixin

    @dataclass(kw_only=True)
    class Both(BaseTrainerConfig, WandBLoggerConfigMixin, MLflowLoggerConfigMixin):
        pass

    class Trainer(Linear, BaseTrainer, WandBLoggerMixin, MLflowLoggerMixin):
        pass

    class Reversed(Linear, BaseTrainer, MLflowLoggerMixin, WandBLoggerMixin):
        pass

    for cls in (Trainer, Reversed):
        with pytest.raises(TypeError, match="both WandBLoggerMixin and MLflowLoggerMixin"):
            cls(Both(logging_parameters=WandbLoggingParameters(run_dir="r")))
    assert not Path("r").exists()


# ------------------------------------------------------------------ epochs that yield nothing
class EmptyLoader(Linear, BaseTrainer, LoggerMixin):
    def train_dataloader(self):  # 5 samples, batches of 8, drop_last: no batch at all
        return DataLoader(TensorDataset(torch.randn(5, 1), torch.randn(5, 1)), batch_size=8,
                          drop_last=True)  # fmt: skip


class OneShot(Linear, BaseTrainer, LoggerMixin):
    def train_dataloader(self):  # a generator: exhausted after the first epoch
        x = torch.linspace(-1, 1, 12).unsqueeze(1)
        return ((x[i : i + 4], 2 * x[i : i + 4]) for i in range(0, 12, 4))


def test_an_epoch_without_batches_raises_instead_of_looping(env):
    params = LoggingParameters(run_dir="empty", log_every_n_steps=2)
    trainer = EmptyLoader(TrainConfig(max_steps=7, logging_parameters=params))
    with pytest.raises(RuntimeError, match=r"epoch 0 yielded no batches.*max_steps=7.*empty"):
        trainer.fit()
    assert trainer.logger.closed

    params = LoggingParameters(run_dir="gen", log_every_n_steps=2)
    trainer = OneShot(TrainConfig(max_steps=7, logging_parameters=params))
    with pytest.raises(RuntimeError, match=r"epoch 1 yielded no batches.*one-shot iterator"):
        trainer.fit()
    assert trainer.global_step == 3
    assert sorted(rows_by_step("gen")) == [2, 3]  # nothing logged before is lost

    # with max_epochs too: a second epoch that trains nothing is no quieter
    params = LoggingParameters(run_dir="gen2")
    trainer = OneShot(TrainConfig(max_epochs=2, logging_parameters=params))
    with pytest.raises(RuntimeError, match="epoch 1 yielded no batches"):
        trainer.fit()


@dataclass(kw_only=True)
class OwnPostInit(BaseTrainerConfig, LoggerConfigMixin):
    lr: float = 0.1
    n: int = 32
    batch_size: int = 8
    restored_step: int = 0
    bad_output: str = ""

    def __post_init__(self):  # forgets super().__post_init__()
        self.lr = float(self.lr)


def test_a_config_that_skips_the_base_post_init_trains_one_epoch(env):
    config = OwnPostInit(logging_parameters=LoggingParameters(run_dir="own"))
    assert config.max_steps is None and config.max_epochs is None
    trainer = LocalTrainer(config)
    trainer.fit()
    assert (trainer.current_epoch, trainer.global_step) == (1, 4)  # 32 samples, batches of 8
