"""Lightning DDP on 2 CPU ranks with distlog: plain ``self.log`` calls get cross-rank values.

    python examples/lightning_ddp.py --run-dir runs/lightning

Lightning's own launcher starts the second rank (``strategy="ddp"``, ``accelerator="cpu"``,
``devices=2``, gloo). Each rank logs values that differ by rank, rank 1 logs a key of its own,
and ``--raw`` makes each rank write every value it logged to ``raw_rank<r>.json`` beside the
run, so a test can rebuild every row from the ranks' raw inputs.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distlog.integrations.lightning import DistlogCallback, DistlogLightningLogger

# distlog reduces every key across ranks itself: Lightning's advice to add sync_dist (a blocking
# all_reduce per key) does not apply to what the callback writes.
warnings.filterwarnings("ignore", message=".*sync_dist=True.*")


class TinyRegressor(pl.LightningModule):
    """A linear model on synthetic data; logs a few keys with different reductions."""

    def __init__(self, width: int = 8, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(width, 1)
        self.raw: list[dict] = []  # what this rank logged, for the test's reference
        self.slow_rank = -1  # --slow-rank: a rank whose training_step is slower
        self.collectives: list[int] = []

    def _log(self, name: str, value: torch.Tensor | float, **kwargs) -> None:
        self.log(name, value, **kwargs)
        if self.trainer.sanity_checking:  # neither Lightning nor distlog keeps these
            return
        self.raw.append(
            {
                "after": self.distlog.step,  # the row is the first flush after this step
                "key": name,
                "value": float(value),
                "reduce": getattr(fx := kwargs.get("reduce_fx", "mean"), "__name__", fx),
                "weight": kwargs.get("batch_size"),
            }
        )

    def training_step(self, batch, batch_idx):
        if self.global_rank == self.slow_rank:
            time.sleep(0.03)  # a slow GPU: system/forward_s/rank_argmax names this rank
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        rank = self.global_rank
        self._log("train/loss", loss.detach(), prog_bar=True)
        self._log("train/samples", float(len(x)), reduce_fx="sum")
        self._log("train/rank_scaled", float((rank + 1) * (batch_idx + 1)), reduce_fx="max")
        self._log("train/rank_low", float(10 * rank + batch_idx), reduce_fx=torch.min)
        if rank == 1:
            self._log("train/only_rank1", float(batch_idx) + 0.5)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Lightning runs this after the callbacks' hook, so a flush of this step is done.
        if self.distlog.step == self.trainer.global_step:
            self.collectives.append(self.distlog.collectives_last_flush)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self._log("val/loss", loss, batch_size=len(x))
        self._log("val/max_err", (self.net(x) - y).abs().max(), reduce_fx="max")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def on_fit_end(self):
        if self._raw_path is not None:
            out = Path(self._raw_path) / f"raw_rank{self.global_rank}.json"
            # What Lightning itself saw: the prog_bar key and the monitored one (the rest went
            # to distlog only, which keeps self.log cheap).
            seen = sorted(self.trainer.callback_metrics)
            out.write_text(
                json.dumps({"raw": self.raw, "collectives": self.collectives, "lightning": seen})
            )

    _raw_path: str | None = None


def data(n: int, width: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    y = x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default="runs/lightning")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help="write each rank's raw values")
    parser.add_argument("--system-metrics", action="store_true")
    parser.add_argument(
        "--slow-rank", type=int, default=-1, help="make this rank's training_step 30 ms slower"
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    model = TinyRegressor()
    model.slow_rank = args.slow_rank
    if args.raw:
        model._raw_path = str(run_dir.parent)
    callback = DistlogCallback(run_dir=run_dir, system_metrics=args.system_metrics)
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=args.epochs,
        log_every_n_steps=args.log_every,
        # EarlyStopping monitors val/loss: the callback passes that key on to Lightning too.
        callbacks=[callback, pl.callbacks.EarlyStopping(monitor="val/loss", patience=100)],
        # Lightning's own logger path, written by rank 0 into a distlog run directory too.
        logger=DistlogLightningLogger(run_dir=run_dir.parent / (run_dir.name + "-pl")),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        default_root_dir=str(run_dir.parent),
    )
    trainer.fit(
        model,
        DataLoader(data(40, 8, 0), batch_size=4),
        DataLoader(data(16, 8, 1), batch_size=4),
    )
    # The Trainer leaves its process group alive; an exit with a live gloo group can abort
    # (SIGABRT at interpreter exit, about one exit in three with torch 2.13).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
