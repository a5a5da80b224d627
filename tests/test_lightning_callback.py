"""DistlogCallback in one process, with the real Lightning: what the wrapped ``self.log`` records,
what Lightning still sees, and the module after its Trainer is done.

Each case was a defect a hostile pass found: positional ``self.log`` arguments read from the
wrong places (a ``reduce_fx="sum"`` silently became a mean), two validation dataloaders averaged
into one key, the module left wrapped after ``fit`` (a later plain Trainer failed with
LoggerClosedError), a reused callback recording sanity-check values, and a checkpoint file name
or ``trainer.test()`` result missing the metrics the callback kept from Lightning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distlog

pl = pytest.importorskip("lightning.pytorch")
from distlog.integrations.lightning import DistlogCallback  # noqa: E402


def trainer(tmp_path: Path, *callbacks: Any, **kwargs: Any) -> Any:
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_steps=4, log_every_n_steps=4, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=2, default_root_dir=tmp_path,
    )  # fmt: skip
    options.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **options)


def data(n: int = 16, value: float = 1.0) -> DataLoader:
    return DataLoader(TensorDataset(torch.full((n, 2), value)), batch_size=4)


class Module(pl.LightningModule):
    def __init__(self, val_loaders: int = 1) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)
        self.val_loaders = val_loaders

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.net(batch[0]).pow(2).mean()
        # positionally: prog_bar, logger, on_step, on_epoch, reduce_fx (, enable_graph)
        self.log("n", 1.0, False, True, True, False, "sum")
        self.log("m", 2.0, False, True, True, False, "sum", False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val/x", float(batch[0][0, 0]))
        self.log("val_acc", 0.75)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_acc", 0.5)

    def val_dataloader(self) -> Any:
        loaders = [data(8, 10.0 * (i + 1)) for i in range(self.val_loaders)]
        return loaders if self.val_loaders > 1 else loaders[0]

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def rows(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "time"} for r in distlog.read_metrics(run)]


def test_positional_arguments_several_dataloaders_and_the_module_afterwards(tmp_path):
    module = Module(val_loaders=2)
    trainer(tmp_path, DistlogCallback(run_dir=tmp_path / "run"), val_check_interval=4).fit(
        module, data()
    )
    train, val = rows(tmp_path / "run")
    assert train == {"step": 4, "n": 4.0, "m": 8.0}  # summed, as reduce_fx="sum" asks
    # Each validation set keeps its own key, named as Lightning names it.
    assert val["val/x/dataloader_idx_0"] == 10.0 and val["val/x/dataloader_idx_1"] == 20.0
    assert "val/x" not in val
    # After fit the module is an ordinary LightningModule: a plain Trainer validates it.
    (result,) = trainer(tmp_path, limit_val_batches=1).validate(Module(), verbose=False)
    assert trainer(tmp_path).validate(module, data(8, 3.0), verbose=False) == [
        {"val/x": 3.0, "val_acc": 0.75}
    ]
    assert result == {"val/x": 10.0, "val_acc": 0.75}


def test_a_callback_reused_by_a_second_trainer_records_no_sanity_check(tmp_path):
    callback = DistlogCallback(run_dir=tmp_path / "run")
    module = Module()
    trainer(tmp_path, callback, max_steps=2, log_every_n_steps=2).fit(module, data())
    second = trainer(
        tmp_path, callback, max_steps=8, log_every_n_steps=2, num_sanity_val_steps=2,
        val_check_interval=8,
    )  # fmt: skip
    second.fit(module, data(32))
    second_run = next(p for p in tmp_path.iterdir() if p.name.startswith("run-"))
    val_steps = [r["step"] for r in rows(second_run) if "val/x" in r]
    assert val_steps == [8], rows(second_run)  # the sanity check (at step 2) left nothing


def test_checkpoint_names_and_test_results_see_the_metrics_they_use(tmp_path):
    checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{epoch}-{val_acc:.2f}", save_top_k=-1
    )
    module = Module()
    run = trainer(
        tmp_path, DistlogCallback(run_dir=tmp_path / "run"), checkpoint,
        enable_checkpointing=True, max_epochs=1, max_steps=-1,
    )  # fmt: skip
    run.fit(module, data())
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch=0-val_acc=0.75.ckpt"]
    assert run.test(module, data(8), verbose=False) == [{"test_acc": 0.5}]
    # fit's teardown finished its run; the test stage is the next run beside it
    assert rows(tmp_path / "run-2") == [{"step": 4, "test_acc": 0.5}]


def test_the_lightning_logger_reports_the_directory_it_writes(tmp_path):
    """A second launch into a directory that holds a run writes the next version; Lightning
    puts checkpoints under ``logger.save_dir``, which named the first run's directory."""
    from distlog.integrations.lightning import DistlogLightningLogger

    first = DistlogLightningLogger(run_dir=tmp_path / "run")
    assert first.save_dir == str(tmp_path / "run")
    first.log_metrics({"a": 1.0}, step=0)
    first.finalize("success")
    second = DistlogLightningLogger(run_dir=tmp_path / "run")
    assert second.save_dir == second.log_dir == str(tmp_path / "run-2")
    second.log_metrics({"a": 2.0}, step=0)
    second.finalize("success")
    assert rows(tmp_path / "run-2") == [{"step": 0, "a": 2.0}]


class EpochModule(Module):
    """Logs with Lightning's on_step/on_epoch combinations and in the epoch hooks."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("t/epoch", torch.tensor(float(batch_idx)), on_step=False, on_epoch=True)
        self.log("t/both", float(batch_idx), on_epoch=True, batch_size=batch_idx + 1)
        self.log("t/step", 1.0)  # training_step's default: on_step only
        return self.net(batch[0]).pow(2).mean()

    def on_train_epoch_start(self) -> None:
        self.log("t/start", 5.0 + self.current_epoch)  # an epoch hook's default: on_epoch

    def on_train_epoch_end(self) -> None:  # Lightning runs it after the callbacks' own
        self.log("t/end", float(self.current_epoch), reduce_fx="sum")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val/both", 2.0 + batch_idx, on_step=True, on_epoch=True)
        self.log("val/x", 1.0)


def test_on_step_and_on_epoch_keep_lightnings_meaning_and_names(tmp_path):
    """An on_epoch training value is one value per epoch, written at the epoch's last step with
    what the module's own on_train_epoch_end logged; on_step and on_epoch together are
    ``name_step`` and ``name_epoch``, as Lightning's loggers get them."""
    run = trainer(
        tmp_path, DistlogCallback(run_dir=tmp_path / "run"), max_epochs=2, max_steps=-1,
        log_every_n_steps=3,
    )  # fmt: skip
    run.fit(EpochModule(), data())  # 4 steps an epoch, validation after each
    both_epoch = (0 * 1 + 1 * 2 + 2 * 3 + 3 * 4) / (1 + 2 + 3 + 4)  # weighted by batch_size
    epoch = {"t/epoch": 1.5, "t/both_epoch": both_epoch}
    want = [
        {"step": 3, "t/step": 1.0, "t/both_step": (0 + 2 + 6) / 6},
        {"step": 4, "t/step": 1.0, "t/both_step": 3.0, "val/both_epoch": 2.5, "val/x": 1.0},
        {"step": 4, **epoch, "t/start": 5.0, "t/end": 0.0},
        {"step": 6, "t/step": 1.0, "t/both_step": 2 / 3},
        {"step": 8, "t/step": 1.0, "t/both_step": 18 / 7, "val/both_epoch": 2.5, "val/x": 1.0},
        {"step": 8, **epoch, "t/start": 6.0, "t/end": 1.0},
    ]
    got = rows(tmp_path / "run")
    assert [sorted(r) for r in got] == [sorted(r) for r in want], got
    for mine, ref in zip(got, want, strict=True):
        assert mine == pytest.approx(ref)


def test_a_call_lightning_would_refuse_is_refused(tmp_path):
    class Useless(Module):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.log("x", 1.0, on_step=False, on_epoch=False)
            return self.net(batch[0]).pow(2).mean()

    with pytest.raises(distlog.LogValueError, match="on_step=False, on_epoch=False"):
        trainer(tmp_path, DistlogCallback(run_dir=tmp_path / "run")).fit(Useless(), data())


def test_an_epoch_value_folds_tensors_where_they_are():
    """A device tensor's running value stays a tensor (no host sync until the flush); min and
    max let a NaN win, as torch.minimum/maximum do."""
    from distlog.integrations.lightning import _EpochValue

    mean = _EpochValue("mean", spread=False)
    for value, weight in ((torch.tensor(1.0), 1), (3.0, 3), (torch.tensor(2.0), 2)):
        mean.add(value, weight)
    value, weight = mean.result()
    assert isinstance(value, torch.Tensor) and float(value) == pytest.approx(14 / 6) and weight == 6
    low = _EpochValue("min", spread=False)
    for value in (4.0, torch.tensor(-1.0), 2.0):
        low.add(value, 1)
    assert low.result() == (torch.tensor(-1.0), None)
    high = _EpochValue("max", spread=False)
    for value in (1.0, float("nan"), 2.0):
        high.add(value, 1)
    assert high.result()[0] != high.result()[0]
