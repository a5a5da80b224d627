"""The Hugging Face Trainer on 2 CPU ranks with distlog (a tiny GPT-2 built from a config).

    torchrun --nproc_per_node=2 examples/hf_trainer.py --run-dir runs/hf

Nothing is downloaded: the model comes from a ``GPT2Config`` with 2 layers and a 64-token
vocabulary, the data is random token ids. ``compute_loss`` logs per-rank values through
``callback.logger`` (they differ by rank; rank 1 logs a key of its own); with ``--raw`` each
rank writes them to ``raw_rank<r>.json`` beside the run, and rank 0 the Trainer's log history.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from distlog import WandbSink
from distlog.integrations.transformers import DistlogCallback


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class RankValuesTrainer(Trainer):
    """Logs per-rank values in ``compute_loss``; distlog reduces them at each logging step."""

    def __init__(self, *args, distlog_callback: DistlogCallback, **kwargs) -> None:
        super().__init__(*args, callbacks=[distlog_callback], **kwargs)
        self.dl = distlog_callback
        self.raw: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            rank = self.args.process_index
            logger = self.dl.logger
            values = [
                ("train/rank_loss", float(loss.detach()), "mean"),
                ("train/tokens", float(inputs["input_ids"].numel()), "sum"),
                ("train/rank_id_max", float(rank * 100 + self.state.global_step), "max"),
            ]
            if rank == 1:
                values.append(("train/only_rank1", float(self.state.global_step), "min"))
            for key, value, reduce in values:
                logger.log_scalar(key, value, reduce)
                self.raw.append(
                    {
                        "after": logger.step,
                        "key": key,
                        "value": value,
                        "reduce": reduce,
                        "weight": None,
                    }
                )
        return (loss, outputs) if return_outputs else loss


class RecordCollectives(TrainerCallback):
    """Runs after DistlogCallback's flush in on_log: how many collectives did it take?"""

    def __init__(self, dl: DistlogCallback) -> None:
        self.dl = dl
        self.counts: list[tuple[int, bool, int]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        train_log = bool(logs) and "loss" in logs
        self.counts.append((state.global_step, train_log, self.dl.logger.collectives_last_flush))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default="runs/hf")
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--wandb", action="store_true", help="also write a wandb run (rank 0)")
    parser.add_argument("--system-metrics", action="store_true")
    parser.add_argument(
        "--slow-rank", type=int, default=-1, help="make this rank's forward 30 ms slower"
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=16,
        vocab_size=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    if args.slow_rank == int(os.environ.get("RANK", "0")):  # a slow GPU, inside the forward
        model.get_input_embeddings().register_forward_pre_hook(lambda *_: time.sleep(0.03))
    training_args = TrainingArguments(
        output_dir=str(run_dir.parent / "hf-output"),
        use_cpu=True,
        ddp_backend="gloo",
        ddp_find_unused_parameters=False,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=args.max_steps,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        learning_rate=1e-3,
    )

    # A factory: wandb.init runs on global rank 0 only, when the logger is built.
    def sinks(logger):  # the wandb run takes the distlog run's id
        return [WandbSink(project="distlog-hf", dir=run_dir.parent, id=logger.run_id)]

    sinks = sinks if args.wandb else None
    dl = DistlogCallback(run_dir=run_dir, sinks=sinks, system_metrics=args.system_metrics)
    trainer = RankValuesTrainer(
        model=model,
        args=training_args,
        train_dataset=TokenData(64, 16, 64, 0),
        eval_dataset=TokenData(16, 16, 64, 1),
        distlog_callback=dl,
    )
    recorder = RecordCollectives(dl)
    trainer.add_callback(recorder)
    trainer.train()
    if args.raw:
        rank = training_args.process_index
        out = {"raw": trainer.raw, "collectives": recorder.counts}
        if rank == 0:
            out["log_history"] = trainer.state.log_history
        (run_dir.parent / f"raw_rank{rank}.json").write_text(json.dumps(out))
    # The Trainer leaves its process group alive; an exit with a live gloo group can abort
    # (SIGABRT at interpreter exit, about one exit in three with torch 2.13).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
