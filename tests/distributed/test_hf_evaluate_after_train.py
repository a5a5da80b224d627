"""``trainer.evaluate()`` after ``trainer.train()`` under torchrun (2 CPU ranks, gloo), with a
``compute_loss`` that logs per-rank values through ``callback.logger`` in evaluation as well.

The run ends at ``on_train_end``, and evaluate runs ``compute_loss`` before any hook the
callback gets: those calls raised LoggerClosedError on every rank. They are held until the
evaluation's ``on_log`` opens the next run, whose row holds them reduced across ranks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
from dist_harness import subprocess_env
from reference import assert_rows_close, reference_row

import distlog

pytest.importorskip("transformers")

WORKER = textwrap.dedent(
    '''
    import json
    import sys
    from pathlib import Path

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from distlog.integrations.transformers import DistlogCallback

    out = Path(sys.argv[1])


    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(0, 64, (n, 8), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}


    class EvalLogging(Trainer):
        """Logs known per-rank values in every compute_loss, without a model.training guard."""

        def __init__(self, *args, dl, **kwargs):
            super().__init__(*args, callbacks=[dl], **kwargs)
            self.dl = dl
            self.raw = []  # (key, value, reduce, weight) of every eval sample this rank logged
            self.seen = []  # what callback.logger read as at each eval call

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            logger = self.dl.logger
            if model.training:
                logger.log_scalar("train/rank_loss", loss.detach())
                return (loss, outputs) if return_outputs else loss
            rank, i = self.args.process_index, len(self.seen)
            self.seen.append({"type": type(logger).__name__, "closed": logger.closed,
                              "run_dir": str(logger.run_dir), "step": logger.step})
            value, weight = rank * 10.0 + i, float(i + 1)
            logger.log_scalar("eval/rank_value", torch.tensor(value), spread=True)
            logger.log_scalar("eval/weighted", value, weight=torch.tensor(weight))
            logger.log_scalar("eval/loss_sum", loss, "sum")  # not detached: held detached
            items = float(inputs["input_ids"].numel())
            top = float(rank * 100 + i)
            logger.log_dict({"eval/items": items, "eval/rank_id_max": top}, "max")
            samples = [("eval/rank_value", value, "mean", 1.0),
                       ("eval/weighted", value, "mean", weight),
                       ("eval/loss_sum", float(loss), "sum", 1.0),
                       ("eval/items", items, "max", 1.0),
                       ("eval/rank_id_max", top, "max", 1.0)]
            if rank == 1:
                logger.log_scalar("eval/only_rank1", 1.0 + i, "min")
                samples.append(("eval/only_rank1", 1.0 + i, "min", 1.0))
            logger.log_precomputed({"eval/precomputed": 0.5 + rank})  # rank 0's is written
            self.raw.extend(samples)
            return (loss, outputs) if return_outputs else loss


    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=64,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    args = TrainingArguments(
        output_dir=str(out / "hf-output"), use_cpu=True, ddp_backend="gloo",
        ddp_find_unused_parameters=False, per_device_train_batch_size=2,
        per_device_eval_batch_size=2, max_steps=2, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-3)
    dl = DistlogCallback(run_dir=out / "run")
    trainer = EvalLogging(model=GPT2LMHeadModel(config), args=args,
                          train_dataset=Tokens(16, 0), eval_dataset=Tokens(8, 1), dl=dl)
    trainer.train()
    metrics = trainer.evaluate()
    new_run = str(dl.logger.run_dir)
    dl.logger.finish()  # every rank: the new run's last flush
    rank = args.process_index
    (out / f"raw_rank{rank}.json").write_text(json.dumps(
        {"raw": trainer.raw, "seen": trainer.seen, "metrics": metrics, "new_run": new_run}))
    torch.distributed.destroy_process_group()
    '''
)


@pytest.mark.slow
def test_evaluate_after_train_writes_the_values_compute_loss_logged_reduced_over_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(script), str(tmp_path),
    ]  # fmt: skip
    env = subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    raws = [json.loads((tmp_path / f"raw_rank{r}.json").read_text()) for r in range(2)]
    for raw in raws:
        # Every eval call saw the finished run: reading callback.logger built nothing.
        assert len(raw["seen"]) == 2, raw["seen"]
        for seen in raw["seen"]:
            assert seen == {"type": "BetweenRuns", "closed": True,
                            "run_dir": str(tmp_path / "run"), "step": 2}  # fmt: skip
        assert raw["new_run"] == str(tmp_path / "run-2")
    # The training run holds no eval value; the evaluation's run holds them all, in one row.
    train_rows = distlog.read_metrics(tmp_path / "run")
    assert [r["step"] for r in train_rows if "loss" in r] == [1, 2]
    assert not any(k.startswith("eval") for row in train_rows for k in row)
    [row] = distlog.read_metrics(tmp_path / "run-2")
    assert row["step"] == 2
    assert math.isclose(row["eval_loss"], raws[0]["metrics"]["eval_loss"], rel_tol=1e-9)
    spread = ("rank_min", "rank_max", "rank_std", "rank_argmax")
    mine = {
        k: v
        for k, v in row.items()
        if k.startswith("eval/") and k != "eval/precomputed" and k.rsplit("/", 1)[1] not in spread
    }
    want = reference_row([[tuple(s) for s in raw["raw"]] for raw in raws])
    assert_rows_close(mine, want)
    # The spread of eval/rank_value: each rank's own mean (rank 0: 0, 1; rank 1: 10, 11).
    assert row["eval/rank_value/rank_min"] == 0.5 and row["eval/rank_value/rank_max"] == 10.5
    assert row["eval/rank_value/rank_argmax"] == 1.0
    assert row["eval/only_rank1"] == 1.0 and row["eval/rank_id_max"] == 101.0
    assert row["eval/precomputed"] == 0.5  # log_precomputed: rank 0's value, as given
    for run in ("run", "run-2"):
        assert distlog.read_run_info(tmp_path / run)["exit_code"] == 0
