"""Lightning under its own DDP launcher (2 CPU ranks, gloo): ``on_step``/``on_epoch`` keep
Lightning's meaning in what DistlogCallback writes, reduced across ranks.

A training value logged with ``on_epoch=True`` is one value per epoch, over every call of every
rank, in a row at the epoch's last step; with ``on_step=True`` too it is ``name_step`` in the
log-step rows and ``name_epoch`` in the epoch row; what the module logs in its own
``on_train_epoch_end`` is in that epoch's row. The rows are compared with a reference built
from every rank's raw values, and their keys and steps with Lightning's own CSVLogger.

This file is also the training script: ``python test_lightning_epochs.py OUT`` (Lightning's
launcher starts the second rank by running the same command again).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

EPOCHS, LOG_EVERY = 2, 3  # 5 optimizer steps an epoch: step rows at 3, 6, 9


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")  # sync_dist advice, few workers, ...
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from distlog.integrations.lightning import DistlogCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(2, 1)
            self.raw: list[dict[str, Any]] = []

        def _log(self, name: str, value: Any, default: tuple[bool, bool], **kw: Any) -> None:
            """self.log, and what Lightning's loggers get from it: ``name``, or ``name_step``
            and ``name_epoch``, the epoch value in the epoch's row ("kind")."""
            self.log(name, value, **kw)
            on_step = kw.get("on_step", default[0])
            on_epoch = kw.get("on_epoch", default[1])
            fx = kw.get("reduce_fx", "mean")
            for kind, suffix, wanted in (("step", "_step", on_step), ("epoch", "_epoch", on_epoch)):
                if wanted:
                    self.raw.append({
                        "key": name + suffix if on_step and on_epoch else name,
                        "kind": kind if self.trainer.training else "step",
                        "value": float(value),
                        "reduce": getattr(fx, "__name__", fx),
                        "weight": kw.get("batch_size") if fx == "mean" else None,
                        "after": self.distlog.step,  # a step value goes in the next row
                        "epoch": self.current_epoch,
                    })  # fmt: skip

        def training_step(self, batch: Any, i: int) -> Any:
            r, e, step = self.global_rank, self.current_epoch, (True, False)
            self._log("plain", float(i + r), step)
            self._log("a", torch.tensor(10.0 * r + i + 100 * e), step, on_step=False,
                      on_epoch=True, batch_size=r + 1)  # fmt: skip
            self._log("b", float(r + 0.5 * i), step, on_step=True, on_epoch=True)
            self._log("s", 1.0 + r, step, on_step=False, on_epoch=True, reduce_fx="sum")
            self._log("hi", torch.tensor(7.0 * r - i), step, on_epoch=True, on_step=False,
                      reduce_fx="max")  # fmt: skip
            self._log("lo", float(i - 3 * r), step, on_step=False, on_epoch=True,
                      reduce_fx=torch.min)  # fmt: skip
            if r == 1:
                self._log("only1", float(i), step, on_step=False, on_epoch=True)
            return self.net(batch[0]).pow(2).mean()

        def on_train_epoch_end(self) -> None:
            epoch = (False, True)
            self._log("ep/stat", 100.0 * self.current_epoch + self.global_rank, epoch)
            self._log("ep/count", 1.0, epoch, reduce_fx="sum")

        def validation_step(self, batch: Any, i: int) -> None:
            self._log("val/v", self.global_rank + 0.25, (False, True))

        def on_fit_end(self) -> None:
            path = out / f"raw_rank{self.global_rank}.json"
            path.write_text(json.dumps({"raw": self.raw}))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    def data(n: int) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=2)

    trainer = pl.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_epochs=EPOCHS,
        log_every_n_steps=LOG_EVERY, num_sanity_val_steps=0,
        # lightning_log=True: Lightning's CSVLogger gets every call too (rank 0's values).
        callbacks=[DistlogCallback(run_dir=out / "run", lightning_log=True)],
        logger=CSVLogger(str(out), name="csv", version=0), default_root_dir=str(out),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Module(), data(20), data(4))  # 5 batches a rank an epoch, 1 to validate
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_epoch_level_training_values_are_one_row_per_epoch_as_lightning_writes_them(tmp_path):
    pytest.importorskip("lightning")
    from dist_harness import subprocess_env
    from integration_helpers import expected_rows, load_raw, user_keys
    from reference import assert_rows_close, reference_row

    import distlog

    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)], env=subprocess_env(), capture_output=True,
        text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = distlog.read_metrics(tmp_path / "run")
    steps = [r["step"] for r in rows]
    # step rows at 3, 6, 9; after each epoch's validation (5, 10) that epoch's row, at its
    # last step; nothing logged with on_epoch=True leaks into a step or validation row.
    assert steps == [3, 5, 5, 6, 9, 10, 10], rows
    epoch_rows = [2, 6]
    assert [i for i, r in enumerate(rows) if "a" in r] == epoch_rows, rows

    raws = load_raw(tmp_path)
    stepwise = [{"raw": [x for x in raw["raw"] if x["kind"] == "step"]} for raw in raws]
    step_rows = [s for i, s in enumerate(steps) if i not in epoch_rows]
    want = iter(expected_rows(stepwise, step_rows))
    for i, row in enumerate(rows):
        if i in epoch_rows:
            epoch = epoch_rows.index(i)
            ref = reference_row([
                [(x["key"], x["value"], x["reduce"], float(x["weight"] or 1))
                 for x in raw["raw"] if x["kind"] == "epoch" and x["epoch"] == epoch]
                for raw in raws
            ])  # fmt: skip
        else:
            ref = next(want)
        assert_rows_close(user_keys(row), ref)
    first = rows[2]  # spelled out once: the weighted mean over every call of every rank
    assert sorted(user_keys(first)) == [
        "a", "b_epoch", "ep/count", "ep/stat", "hi", "lo", "only1", "s",
    ]  # fmt: skip
    assert first["a"] == pytest.approx((1 * sum(range(5)) + 2 * sum(10 + i for i in range(5))) / 15)
    assert first["ep/stat"] == 0.5 and rows[6]["ep/stat"] == 100.5 and first["ep/count"] == 2
    assert first["s"] == 15 and first["hi"] == 7 and first["lo"] == -3 and first["only1"] == 2
    assert "b_step" in rows[0] and "b" not in rows[0]

    # Lightning's own logger got the same keys at the same steps (its step is the optimizer
    # steps taken before the row's, one less than trainer.global_step after it).
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        lightning = [
            (int(r["step"]) + 1, sorted(k for k, v in r.items() if v and k not in ("step", "epoch")))
            for r in csv.DictReader(f)
        ]  # fmt: skip
    lightning_epochs = [(s, keys) for s, keys in lightning if "a" in keys]
    assert lightning_epochs == [
        (rows[i]["step"], sorted(k for k in user_keys(rows[i]) if k != "only1"))
        for i in epoch_rows
    ]  # fmt: skip
    lightning_steps = [(s, keys) for s, keys in lightning if "plain" in keys]
    assert lightning_steps == [(s, ["b_step", "plain"]) for s in (3, 6, 9)]
    assert [(rows[i]["step"], sorted(user_keys(rows[i]))) for i in (0, 3, 4)] == lightning_steps


if __name__ == "__main__":
    main(Path(sys.argv[1]))
