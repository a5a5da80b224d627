"""The Hugging Face callback in one process, with the real Trainer and a tiny GPT-2 built from
a config: what ``callback.logger`` is after ``train()``, and where a later evaluation goes."""

from __future__ import annotations

import torch

import distlog

transformers = __import__("pytest").importorskip("transformers")
from distlog.integrations.transformers import DistlogCallback  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(0, 64, (n, 8), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_the_logger_after_train_is_the_finished_one_and_evaluate_starts_the_next_run(tmp_path):
    """Reading ``callback.logger`` after ``train()`` built a new Logger, a collective: on rank 0
    alone (``if trainer.is_world_process_zero(): callback.logger.run_dir``) it waited for the
    other ranks until the timeout; on every rank it opened an empty run."""
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, max_steps=4, logging_steps=2, save_strategy="no",
        report_to="none", disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    callback = DistlogCallback(run_dir=tmp_path / "run")
    trainer = transformers.Trainer(
        model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=Tokens(16, 0),
        eval_dataset=Tokens(8, 1), callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    finished = callback.logger
    assert finished.closed and finished.run_dir == tmp_path / "run"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run"]
    assert [r["step"] for r in distlog.read_metrics(tmp_path / "run") if "loss" in r] == [2, 4]
    trainer.evaluate()  # a hook every rank runs: the next run, beside the finished one
    assert callback.logger is not finished and callback.logger.run_dir == tmp_path / "run-2"
    callback.logger.finish()
    assert "eval_loss" in distlog.read_metrics(tmp_path / "run-2")[0]
