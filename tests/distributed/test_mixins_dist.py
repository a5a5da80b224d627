"""Mistakes in a trainer's set-up on real gloo groups: every rank raises the same clear error,
at construction, before any collective; an epoch without batches ends the job on every rank.

Failure modes (each failed before its fix): ``WandBLoggerMixin`` given plain
``LoggingParameters`` or a ``settings`` key wandb rejects failed on rank 0 alone, while building
its sinks (a TypeError, a raw pydantic ValidationError), and the other ranks got an unrelated
DistNetworkError / DistStoreError; ``fit()`` over a loader that yields no batch looped forever
with ``max_steps`` set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from dist_harness import run_ranks

pytestmark = pytest.mark.slow


def _build(rank: int, root: str, mode: str) -> str:
    os.chdir(root)
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=root)
    from torch.utils.data import DataLoader, TensorDataset

    from distlog.mixins import (
        LoggerConfigMixin,
        LoggerMixin,
        LoggingParameters,
        WandBLoggerConfigMixin,
        WandBLoggerMixin,
        WandbLoggingParameters,
    )
    from distlog.trainer import BaseTrainer, BaseTrainerConfig

    @dataclass(kw_only=True)
    class WandbConfig(BaseTrainerConfig, WandBLoggerConfigMixin):
        pass

    @dataclass(kw_only=True)
    class LocalConfig(BaseTrainerConfig, LoggerConfigMixin):
        pass

    class Body:
        def configure(self) -> None:
            self.model = torch.nn.Linear(2, 1)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)

        def train_dataloader(self) -> Any:
            if mode == "empty_loader":  # 5 samples over 2 ranks, batches of 4, drop_last
                return DataLoader(TensorDataset(torch.randn(5, 2)), batch_size=4, drop_last=True)
            return [(torch.randn(4, 2),)] * 3

        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            loss = self.model(batch[0]).pow(2).mean()
            self.log_scalar("loss", loss)
            return {"loss": loss}

    class WandbTrainer(Body, BaseTrainer, WandBLoggerMixin):
        pass

    class LocalTrainer(Body, BaseTrainer, LoggerMixin):
        pass

    run_dir = os.path.join(root, f"r_{mode}")
    try:
        if mode == "plain_params":
            params: Any = LoggingParameters(run_dir=run_dir, timeout=30)
            WandbTrainer(WandbConfig(logging_parameters=params)).fit()
        elif mode == "settings":
            params = WandbLoggingParameters(
                run_dir=run_dir, timeout=30, settings={"nonexistent_setting": 1}
            )
            WandbTrainer(WandbConfig(logging_parameters=params)).fit()
        else:
            params = LoggingParameters(run_dir=run_dir, timeout=30)
            LocalTrainer(LocalConfig(max_steps=5, logging_parameters=params)).fit()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.parametrize(
    "mode, error",
    [
        ("plain_params", r"LogTypeError: .*WandBLoggerMixin\) needs logging_parameters="),
        ("settings", r"LogValueError: logging_parameters.settings: .*nonexistent_setting"),
        ("empty_loader", r"RuntimeError: epoch 0 yielded no batches on rank \d"),
    ],
)
def test_every_rank_raises_the_same_clear_error(tmp_path, mode, error):
    pytest.importorskip("wandb")
    import re

    results = run_ranks(_build, 2, str(tmp_path), mode, timeout=90)
    for rank, message in enumerate(results):
        assert re.match(error, message), (rank, message)
        assert not re.search("DistNetworkError|DistStoreError|RankDivergence|timed out", message)
    if mode != "empty_loader":
        assert not (tmp_path / "wandb").exists()  # refused before any wandb run was made
