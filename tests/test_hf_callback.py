"""The Hugging Face callback in one process, with the real Trainer and a tiny GPT-2 built from
a config: what ``callback.logger`` is after ``train()``, and where a later evaluation goes."""

from __future__ import annotations

import pytest
import torch

import distlog

transformers = pytest.importorskip("transformers")
from distlog.integrations.transformers import DistlogCallback  # noqa: E402
from distlog.sinks import ConsoleSink  # noqa: E402


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


class LossLoggingTrainer(transformers.Trainer):
    """Logs each batch's loss through the callback, in training and evaluation alike (no
    ``if model.training`` guard), as the documented pattern does."""

    def __init__(self, *args, distlog_cb: DistlogCallback, **kwargs) -> None:
        super().__init__(*args, callbacks=[distlog_cb], **kwargs)
        self.dl = distlog_cb
        self.eval_losses: list[float] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        prefix = "train" if model.training else "eval"
        self.dl.logger.log_scalar(f"{prefix}/batch_loss", loss)  # not detached: held detached
        if not model.training:
            self.eval_losses.append(float(loss))
        return (loss, outputs) if return_outputs else loss


def test_log_calls_after_train_are_held_for_the_run_that_evaluate_opens(tmp_path):
    """``trainer.evaluate()`` after ``train()`` runs ``compute_loss`` before any hook: its
    ``callback.logger.log_scalar`` raised LoggerClosedError (the finished run's Logger). Now the
    calls are held, reads still describe the finished run, and the run that evaluate opens
    gets them in its row; calls that cannot be held raise a clear error."""
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, max_steps=2, logging_steps=2, save_strategy="no",
        report_to="none", disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    callback = DistlogCallback(run_dir=tmp_path / "run")
    trainer = LossLoggingTrainer(
        model=transformers.GPT2LMHeadModel(config), args=args, train_dataset=Tokens(8, 0),
        eval_dataset=Tokens(8, 1), distlog_cb=callback,
    )  # fmt: skip
    trainer.train()
    between = callback.logger
    run_id = distlog.read_run_info(tmp_path / "run")["id"]
    # Reads are the finished run's, and build nothing.
    assert between.closed and between.run_dir == tmp_path / "run" and between.run_id == run_id
    assert between.step == 2 and callback.logger is between
    # Held, with tensors detached and values as given: nothing is read or written yet.
    grad = torch.tensor(2.0, requires_grad=True) * 1.0
    between.log_scalar("eval/mine", grad)
    between.log_dict({"eval/count": 1.0, "eval/top": torch.tensor(5.0)}, "max")
    between.log_precomputed({"eval/global": 7.5})
    between.log_scalar("eval/mine", 4.0)
    # Bad input fails at the call, as the Logger's would, and holds nothing.
    with pytest.raises(distlog.LogTypeError, match="eval/bad"):
        between.log_scalar("eval/bad", "x")
    with pytest.raises(distlog.LogValueError, match="reserved"):
        between.log_dict({"step": 1.0})
    # Calls that cannot be held say when the next run opens.
    for call in (
        lambda: between.flush(step=3),
        lambda: between.finish(),  # it would drop the held values
        lambda: between.log_histogram("eval/h", torch.ones(4)),
        lambda: between.add_sink(ConsoleSink()),
    ):
        with pytest.raises(distlog.LoggerClosedError, match="next hook every rank runs"):
            call()
    assert not (tmp_path / "run-2").exists() and between.closed and between.step == 2
    metrics = trainer.evaluate()  # compute_loss logs before the hook that opens the next run
    new = callback.logger
    assert new is not between and not new.closed and new.run_dir == tmp_path / "run-2"
    new.finish()
    [row] = distlog.read_metrics(tmp_path / "run-2")
    losses = trainer.eval_losses
    assert len(losses) == 2 and row["step"] == 2
    assert row["eval/batch_loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)
    assert row["eval/mine"] == 3.0 and row["eval/count"] == 1.0 and row["eval/top"] == 5.0
    assert row["eval/global"] == 7.5 and row["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert "eval/bad" not in row
    # The finished run got nothing more.
    assert not any(k.startswith("eval/") for r in distlog.read_metrics(tmp_path / "run") for k in r)
