"""A job that crashes once and is restarted by torchrun (--max-restarts=1).

User code saves a checkpoint every ``--ckpt-every`` steps and restores it in ``configure``; the
first attempt raises at ``--crash-at``. distlog must keep the same wandb run (same id) across the
restart, continue from the restored step, and warn about the steps logged twice.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from distlog.mixins import WandBLoggerConfigMixin, WandBLoggerMixin, WandbLoggingParameters
from distlog.trainer import BaseTrainer, BaseTrainerConfig, Callback


@dataclass(kw_only=True)
class Config(BaseTrainerConfig, WandBLoggerConfigMixin):
    checkpoint: str
    ckpt_every: int
    crash_at: int


class Checkpoint(Callback):
    def on_train_batch_end(self, trainer, batch, batch_idx, outputs):
        if trainer.global_step % trainer.config.ckpt_every == 0 and trainer.world.is_global_zero:
            state = {
                "model": trainer.model.module.state_dict()
                if hasattr(trainer.model, "module")
                else trainer.model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "global_step": trainer.global_step,
            }
            tmp = Path(trainer.config.checkpoint + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, trainer.config.checkpoint)


class Job(BaseTrainer, WandBLoggerMixin):
    def configure(self):
        self.model = torch.nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        if os.path.exists(self.config.checkpoint):
            state = torch.load(self.config.checkpoint)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.global_step = state["global_step"]

    def train_dataloader(self):
        x = torch.linspace(-1, 1, 64).reshape(32, 2)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=2)

    def training_step(self, batch, batch_idx):
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restarts == 0 and self.global_step == self.config.crash_at:
            raise RuntimeError(f"simulated crash at step {self.global_step}")
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.log_scalar("train/loss", loss)
        self.log_scalar("train/step_seen", self.global_step + 1, reduce="max")
        return {"loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--crash-at", type=int, default=7)
    parser.add_argument("--ckpt-every", type=int, default=4)
    args = parser.parse_args()
    root = Path(args.root)
    params = WandbLoggingParameters(
        log_every_n_steps=2,
        run_dir=str(root / "local"),
        dir=str(root / "wandb_dir"),
        project="restart",
    )
    config = Config(
        experiment="restart",
        max_steps=args.max_steps,
        max_epochs=None,
        logging_parameters=params,
        callbacks=[Checkpoint()],
        checkpoint=str(root / "ckpt.pt"),
        ckpt_every=args.ckpt_every,
        crash_at=args.crash_at,
    )
    Job(config).fit()


if __name__ == "__main__":
    main()
