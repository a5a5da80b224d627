"""Bad input to the integrations: clear errors that name the extra, the version range or the key."""

from __future__ import annotations

import re

import pytest
import torch

import distlog
from distlog.integrations.versions import require


def test_a_missing_framework_names_the_extra_and_the_range():
    with pytest.raises(ImportError, match=r"pip install 'distlog\[lightning\]'.*>=2\.4,<3"):
        require("lightning.pytorch", "no-such-distribution-xyz", "lightning", "2.4", "3")


def test_an_unsupported_version_names_the_installed_one():
    with pytest.raises(
        ImportError, match=rf"supports torch>=0\.1,<1; {re.escape(torch.__version__)}"
    ):
        require("torch", "torch", "accelerate", "0.1", "1")
    assert require("torch", "torch", "accelerate", "2.0", "99") is torch


def test_a_reduce_fx_distlog_cannot_honour_is_an_error_naming_the_key():
    lightning = pytest.importorskip("distlog.integrations.lightning")
    assert lightning.reduction_of("a", "avg") == "mean"
    assert lightning.reduction_of("a", torch.max) == "max"
    assert lightning.reduction_of("a", "SUM") == "sum"
    with pytest.raises(distlog.LogValueError, match="'train/p90'"):
        lightning.reduction_of("train/p90", lambda t: t.quantile(0.9))
    with pytest.raises(distlog.LogValueError, match="'x'"):
        lightning.reduction_of("x", "median")


def test_a_lightning_exception_closes_the_run_with_a_non_zero_exit_code(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distlog.integrations.lightning import DistlogCallback

    class Failing(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            if batch_idx == 3:
                raise RuntimeError("boom at batch 3")
            loss = self.net(batch[0]).pow(2).mean()
            self.log("train/loss", loss)  # not detached: the callback detaches it
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=10, log_every_n_steps=2, logger=False,
        callbacks=[DistlogCallback(run_dir=tmp_path / "run")], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=4)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), data)
    assert [r["step"] for r in distlog.read_metrics(tmp_path / "run")] == [2]
    assert distlog.read_run_info(tmp_path / "run")["exit_code"] == 1
