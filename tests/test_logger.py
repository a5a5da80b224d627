"""The Logger in one process (a world of one): semantics, validation, run log format."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch

import distlog
from distlog.runlog import METRICS_FILE


def make(tmp_path, **kw):
    kw.setdefault("async_write", False)
    return distlog.Logger(run_dir=tmp_path, **kw)


def test_world_of_one_without_a_process_group():
    world = distlog.World.current()
    assert (world.rank, world.world_size, world.group_size) == (0, 1, 1)
    assert world.is_global_zero and not world.is_distributed
    assert world.device == torch.device("cpu")


def test_each_reduction_over_buffered_steps(tmp_path):
    log = make(tmp_path)
    for v in [1.0, 2.0, 6.0]:
        log.log_scalar("mean", v)
        log.log_scalar("sum", v, reduce="sum")
        log.log_scalar("min", v, reduce="min")
        log.log_scalar("max", v, reduce="max")
        log.log_scalar("last", v, reduce="last")
    log.log_scalar("w", 1.0, weight=3)
    log.log_scalar("w", 5.0, weight=1)
    row = log.flush(3, block=True)
    assert row == {"mean": 3.0, "sum": 9.0, "min": 1.0, "max": 6.0, "last": 6.0, "w": 2.0}
    log.finish()


@pytest.mark.parametrize(
    "value",
    [
        2,
        2.0,
        np.float32(2.0),
        np.int64(2),
        torch.tensor(2.0),
        torch.tensor([2.0]),
        torch.tensor([[2]], dtype=torch.int32),
        torch.tensor(2.0, dtype=torch.bfloat16),
        torch.tensor(2.0, dtype=torch.float16),
        torch.tensor(2.0, requires_grad=True) * 1,
    ],
    ids=lambda v: type(v).__name__ + (str(v.dtype) if hasattr(v, "dtype") else ""),
)
def test_accepted_value_types(tmp_path, value):
    log = make(tmp_path)
    log.log_scalar("v", value)
    log.log_scalar("b", torch.tensor(True), reduce="sum")
    assert log.flush(0, block=True) == {"v": 2.0, "b": 1.0}
    log.finish()


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [
        (lambda L: L.log_scalar("k", "1.0"), distlog.LogTypeError, "'k'"),
        (lambda L: L.log_scalar("k", None), distlog.LogTypeError, "'k'"),
        (lambda L: L.log_scalar("k", torch.zeros(2, 2)), distlog.LogValueError, "(2, 2)"),
        (lambda L: L.log_scalar("k", torch.zeros(0)), distlog.LogValueError, "'k'"),
        (lambda L: L.log_scalar("k", 1j), distlog.LogTypeError, "complex"),
        (lambda L: L.log_scalar(("a",), 1.0), distlog.LogTypeError, "('a',)"),
        (lambda L: L.log_scalar("", 1.0), distlog.LogValueError, "''"),
        (lambda L: L.log_scalar("k", 1.0, reduce="avg"), distlog.LogValueError, "'avg'"),
        (lambda L: L.log_scalar("k", 1.0, weight=-1), distlog.LogValueError, "'k'"),
        (lambda L: L.log_scalar("k", 1.0, weight=math.nan), distlog.LogValueError, "'k'"),
        (lambda L: L.log_scalar("k", 1.0, reduce="sum", weight=2), distlog.LogValueError, "'k'"),
        (lambda L: L.log_dict([("k", 1.0)]), distlog.LogTypeError, "mapping"),
        (lambda L: L.flush(step=1.5), distlog.LogTypeError, "step"),
        (lambda L: L.flush(step=-1), distlog.LogValueError, "step"),
        # Past 2**48 the flush header could not tell two ranks' steps apart.
        (lambda L: L.flush(step=2**53 + 1), distlog.LogValueError, "below 2**48"),
        # numpy counts a timedelta64 as an integer, and float() of it raised a bare TypeError.
        (lambda L: L.log_scalar("k", np.timedelta64(3, "s")), distlog.LogTypeError, "'k'"),
        (lambda L: L.log_dict({"k": np.timedelta64(3, "s")}), distlog.LogTypeError, "'k'"),
        (lambda L: L.log_scalar("k", 1.0, weight=np.timedelta64(3)), distlog.LogTypeError, "'k'"),
        (lambda L: L.log_precomputed({"k": np.datetime64(3, "s")}), distlog.LogTypeError, "'k'"),
        # Raw bits: torch's own NotImplementedError ("_local_scalar_dense_cpu") named no key.
        (
            lambda L: L.log_scalar("k", torch.zeros((), dtype=torch.bits8)),
            distlog.LogTypeError,
            "'k'",
        ),
        (
            lambda L: L.log_dict({"k": torch.zeros(1, dtype=torch.bits16)}),
            distlog.LogTypeError,
            "'k'",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_keeps_what_was_buffered(tmp_path, call, error, names):
    log = make(tmp_path)
    log.log_scalar("kept", 4.0)
    with pytest.raises(error) as info:
        call(log)
    assert names in str(info.value)
    assert log.flush(0, block=True) == {"kept": 4.0}
    log.finish()


def test_a_key_keeps_its_reduction(tmp_path):
    log = make(tmp_path)
    log.log_scalar("loss", 1.0)
    log.flush(0)
    with pytest.raises(distlog.LogValueError, match="'loss'.*reduce='mean'"):
        log.log_scalar("loss", 1.0, reduce="max")
    log.finish()


def test_log_dict_is_all_or_nothing(tmp_path):
    log = make(tmp_path)
    with pytest.raises(distlog.LogTypeError, match="'b'"):
        log.log_dict({"a": 1.0, "b": "x", "c": 2.0})
    log.log_dict({"a": 1.0, "c": 3.0}, reduce="sum")
    assert log.flush(0, block=True) == {"a": 1.0, "c": 3.0}
    log.finish()


def test_nonfinite_values_are_strict_json_and_round_trip(tmp_path):
    log = make(tmp_path)
    log.log_scalar("nan", math.nan)
    log.log_scalar("inf", math.inf, reduce="max")
    log.log_scalar("ninf", -math.inf, reduce="sum")
    log.log_scalar("t_nan", torch.tensor(float("nan")), reduce="min")
    with pytest.warns(UserWarning, match="non-finite") as rec:
        log.flush(0)
    assert len(rec) == 4  # one warning per key
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same keys
        log.log_scalar("nan", math.nan)
        log.flush(1)
    log.finish()
    text = (tmp_path / METRICS_FILE).read_text().splitlines()
    first = json.loads(text[0], parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert first["nan"] == "NaN" and first["inf"] == "Infinity" and first["ninf"] == "-Infinity"
    rows = distlog.read_metrics(tmp_path)
    assert math.isnan(rows[0]["nan"]) and rows[0]["inf"] == math.inf
    assert rows[0]["ninf"] == -math.inf and math.isnan(rows[0]["t_nan"])


def test_nonfinite_drop_policy(tmp_path):
    log = make(tmp_path, nonfinite="drop")
    log.log_scalar("nan", math.nan)
    log.log_scalar("ok", 1.0)
    assert log.flush(0, block=True) == {"ok": 1.0}
    log.finish()


def test_rows_steps_and_empty_flushes(tmp_path):
    log = make(tmp_path)
    log.log_scalar("a", 1.0)
    log.flush()  # step 0
    assert log.flush(block=True) == {}  # nothing logged: no row written
    log.log_scalar("a", 2.0)
    log.flush(10)
    with pytest.warns(UserWarning, match="backwards"):
        log.flush(5)
    log.finish()
    rows = distlog.read_metrics(tmp_path)
    assert [(r["step"], r["a"]) for r in rows] == [(0, 1.0), (10, 2.0)]


def test_finish_flushes_closes_and_forbids_more_logging(tmp_path):
    log = distlog.Logger(run_dir=tmp_path)  # async writer thread
    log.log_scalar("a", 1.0)
    log.finish()
    log.finish()  # idempotent
    assert distlog.read_metrics(tmp_path) == [
        {"step": 0, "time": distlog.read_metrics(tmp_path)[0]["time"], "a": 1.0}
    ]
    with pytest.raises(distlog.LoggerClosedError):
        log.log_scalar("a", 1.0)
    with pytest.raises(distlog.LoggerClosedError):
        log.flush()


def test_context_manager_and_append_on_restart(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    with distlog.Logger(run_dir=tmp_path) as log:
        log.log_scalar("a", 1.0)
        log.flush(1)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with distlog.Logger(run_dir=tmp_path) as log:  # a restarted job continues the file
        log.log_scalar("a", 2.0)
        log.flush(2)
    assert [r["a"] for r in distlog.read_metrics(tmp_path)] == [1.0, 2.0]


def test_precomputed_values_are_written_as_they_are(tmp_path):
    log = make(tmp_path)
    log.log_precomputed({"val/f1": torch.tensor(0.125), "val/n": 3})
    log.log_scalar("x", 1.0)
    assert log.flush(0, block=True) == {"x": 1.0, "val/f1": 0.125, "val/n": 3.0}
    log.finish()


@dataclasses.dataclass
class _Opt:
    lr: float = 0.1
    api_key: str = "sk-123"


@dataclasses.dataclass
class _Cfg:
    name: str = "run"
    optim: _Opt = dataclasses.field(default_factory=_Opt)
    layers: tuple[int, ...] = (1, 2)
    wandb_token: str = "abc"
    monkey: int = 3


def test_log_config_turns_dataclasses_into_json_and_redacts_secrets(tmp_path):
    log = make(tmp_path)
    plain = log.log_config(_Cfg())
    log.finish()
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk == plain
    assert plain["optim"] == {"lr": 0.1, "api_key": "***REDACTED***"}
    assert plain["wandb_token"] == "***REDACTED***" and plain["monkey"] == 3
    assert plain["layers"] == [1, 2]
    assert distlog.to_config_dict(_Cfg(), redact=False)["optim"]["api_key"] == "sk-123"


def test_a_failing_sink_warns_and_the_others_keep_writing(tmp_path):
    class Broken:
        def log_scalars(self, step, values):
            raise OSError("disk full")

        def log_media(self, step, key, item): ...
        def log_config(self, config): ...
        def close(self, exit_code=0): ...

    log = distlog.Logger(run_dir=tmp_path, sinks=[Broken()], async_write=False)
    log.log_scalar("a", 1.0)
    with pytest.warns(UserWarning, match="Broken.log_scalars failed: OSError: disk full"):
        log.flush(0)
    log.finish()
    assert distlog.read_metrics(tmp_path)[0]["a"] == 1.0


def test_console_sink_prints_a_compact_line(tmp_path, capsys):
    log = make(tmp_path, console=True)
    log.log_scalar("train/loss", 0.5)
    log.log_scalar("data/tokens", 65536, reduce="sum")
    log.flush(120)
    log.finish()
    assert "step 120 | data/tokens 65536 | train/loss 0.5" in capsys.readouterr().out


def test_torn_last_line_is_skipped_by_the_reader(tmp_path):
    log = make(tmp_path)
    log.log_scalar("a", 1.0)
    log.flush(0)
    log.finish()
    with open(tmp_path / METRICS_FILE, "a") as fh:
        fh.write('{"step": 1, "a": 2')  # a writer killed mid-line
    assert [r["a"] for r in distlog.read_metrics(tmp_path)] == [1.0]


def test_a_dict_with_spread_cannot_log_its_own_spread_columns(tmp_path):
    logger = make(tmp_path)
    with pytest.raises(distlog.LogValueError, match="y/rank_std"):
        logger.log_dict({"y": 1.0, "y/rank_std": 777.0}, spread=True)
    logger.log_scalar("z", 1.0)
    assert logger.flush(0, block=True) == {"z": 1.0}  # nothing of the bad call was buffered
    logger.finish()


def test_console_folds_spread_columns_into_their_key(tmp_path):
    import io

    from distlog import layout, runlog

    assert runlog.SPREAD_SUFFIXES is layout.SPREAD_SUFFIXES  # one set of names
    out = io.StringIO()
    sink = distlog.ConsoleSink(out)
    sink.log_scalars(
        7,
        {
            "time/step_ms": 11.5,
            "time/step_ms/rank_min": 7.4,
            "time/step_ms/rank_max": 11.5,
            "time/step_ms/rank_std": 2.05,
            "time/step_ms/rank_argmax": 0.0,
            "train/loss": 0.25,
            "other/rank_max": 3.0,  # no key "other": an ordinary column
        },
    )
    line = out.getvalue().strip()
    assert line == (
        "step 7 | other/rank_max 3 | time/step_ms 11.5 [7.4..11.5 r0] | train/loss 0.25"
    )


def test_a_logger_refuses_to_be_pickled_and_a_deep_copy_shares_it(tmp_path):
    """A spawned DataLoader worker gets its dataset pickled: a dataset holding the logger must
    fail with a message that says what to do, not 'cannot pickle _thread.lock'. A deep copy
    of a model that holds it (torch's AveragedModel, EMA and SWA callbacks) shares it."""
    import copy
    import pickle

    logger = distlog.Logger(run_dir=tmp_path)
    logger.log_scalar("x", 1.0)
    with pytest.raises(distlog.LogTypeError, match="cannot be pickled"):
        pickle.dumps(logger)
    model = torch.nn.Linear(2, 2)
    model.distlog = logger  # as DistlogCallback gives a LightningModule
    averaged = torch.optim.swa_utils.AveragedModel(model)  # deep-copies the model
    assert averaged.module.distlog is logger and copy.copy(logger) is logger
    averaged.module.distlog.log_scalar("x", 3.0)
    logger.flush(0)  # nothing was lost
    logger.finish()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["x"]) for r in rows] == [(0, 2.0)]


def test_integration_objects_pickle_without_their_logger(tmp_path):
    """Lightning's ddp_spawn pickles the trainer's callbacks and loggers into new processes:
    the copy leaves the Logger behind and builds its own on first use."""
    import pickle

    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    from distlog.integrations.lightning import DistlogCallback, DistlogLightningLogger
    from distlog.integrations.transformers import DistlogCallback as HFCallback

    lightning_logger = DistlogLightningLogger(run_dir=tmp_path / "pl")
    lightning_logger.log_hyperparams({"lr": 0.1})  # builds its Logger
    hf = HFCallback(run_dir=tmp_path / "hf")
    hf.logger.log_scalar("x", 1.0)  # builds its Logger
    for obj, live in ((lightning_logger, lightning_logger.experiment), (hf, hf.logger)):
        copy = pickle.loads(pickle.dumps(obj))
        assert copy._logger is None and not live.closed  # the original keeps its Logger
    copy = pickle.loads(pickle.dumps(DistlogCallback(run_dir=tmp_path / "cb")))
    assert copy._logger is None
    hf.logger.flush(0)
    hf.logger.finish()
    lightning_logger.experiment.finish()
    assert [r["x"] for r in distlog.read_metrics(tmp_path / "hf")] == [1.0]
    assert json.loads((tmp_path / "pl" / "config.json").read_text())["lr"] == 0.1


@pytest.mark.parametrize("async_flush", [False, True])
def test_a_buffered_tensor_changed_in_place_after_the_call_keeps_its_value(tmp_path, async_flush):
    """A device tensor is buffered as a tensor (CPU tensors are, with fold_host_tensors=False,
    the same path): its value is the one at the call. Before, a running accumulator reset
    in place after logging (``running.zero_()``) was written as 0.0."""
    log = distlog.Logger(
        run_dir=tmp_path, async_write=False, async_flush=async_flush,
        exchange=distlog.ExchangeOptions(fold_host_tensors=False),
    )  # fmt: skip
    running = torch.zeros(())
    weight = torch.tensor(2.0)
    for step in range(3):
        for _ in range(4):
            running += 1.0
        log.log_scalar("loss_sum", running, reduce="sum")
        log.log_scalar("loss_last", running, reduce="last")
        log.log_scalar("weighted", running, weight=weight)
        running.zero_()
        weight.fill_(0.0)  # a weight changed in place later counts as given, too
        log.flush(step)
        weight.fill_(2.0)
    log.finish()
    assert [
        (r["loss_sum"], r["loss_last"], r["weighted"]) for r in distlog.read_metrics(tmp_path)
    ] == [(4.0, 4.0, 4.0)] * 3


@pytest.mark.parametrize("step", [-1, 5.0])
def test_finish_with_a_bad_step_is_an_error_at_the_call_not_a_crashed_run(tmp_path, step):
    """Before, the argument error closed the logger as a crash (exit code 1 in run.json) and
    dropped what was logged since the last flush without a word."""
    log = make(tmp_path)
    log.log_scalar("tail", 1.0)
    with pytest.raises((distlog.LogValueError, distlog.LogTypeError), match="step"):
        log.finish(step=step)
    assert not log.closed
    log.finish(step=3)
    assert [(r["step"], r["tail"]) for r in distlog.read_metrics(tmp_path)] == [(3, 1.0)]
    assert distlog.read_run_info(tmp_path)["exit_code"] == 0


def test_media_queued_before_a_resumed_runs_first_flush_lands_after_its_written_steps(tmp_path):
    """A resumed run that ends (crash, signal) before its first flush writes what it queued
    after the steps already written. Before, it went at step 0: the file's last row, so the
    next resume started over from step 0 and wrote steps a second time."""
    first = make(tmp_path)
    for step in range(10):
        first.log_scalar("x", float(step))
        first.flush(step)
    first.finish()
    resumed = distlog.Logger(run_dir=tmp_path, async_write=False, resume=True)
    resumed.log_precomputed({"eval/acc": 0.5})
    resumed.finish(exit_code=1)  # before any flush
    rows = distlog.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [*range(10), 10] and rows[-1]["eval/acc"] == 0.5
    again = distlog.Logger(run_dir=tmp_path, async_write=False, resume=True)
    for step in range(5, 12):  # replayed from a checkpoint at step 5
        again.log_scalar("x", float(step))
        again.flush(step)
    again.finish()
    steps = [r["step"] for r in distlog.read_metrics(tmp_path)]
    assert steps == [*range(10), 10, 11], steps  # nothing twice


# ------------------------------------------------------------------ the protocol choice
def _protocol(ranks: int, keys: int, **options) -> str:
    from distlog.exchange import choose_protocol
    from distlog.layout import KeySpec, Layout
    from distlog.world import World

    world = World(rank=0, world_size=ranks, backend="gloo", group_ranks=tuple(range(ranks)))
    layout = Layout([KeySpec(f"k{i}", "mean", False) for i in range(keys)])
    return choose_protocol(distlog.ExchangeOptions(**options), world, layout)


def test_the_gather_is_chosen_while_rank_0_receives_little_and_the_group_is_small():
    """Rank 0 receives ranks x (5 + 3 keys) float64 on the gather; past 1 MiB, or past
    gather_max_ranks ranks (one message to every rank stops paying), the all-reduce."""
    assert _protocol(8, 128) == "gather"
    assert _protocol(200, 1000) == "all_reduce"  # 200 x 3005 x 8 bytes > 1 MiB
    assert _protocol(256, 1) == "gather"
    assert _protocol(257, 1) == "all_reduce"  # 8 slots a rank: only the rank cap applies
    assert _protocol(64, 128, gather_max_ranks=32) == "all_reduce"
    assert _protocol(2, 128, gather_limit_bytes=0) == "all_reduce"
    assert _protocol(2, 128, protocol="gather", gather_max_ranks=0) == "gather"  # forced


@pytest.mark.parametrize("field", ["gather_limit_bytes", "gather_max_ranks"])
@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_exchange_limits_must_be_non_negative_ints(field, bad):
    with pytest.raises(distlog.LogValueError, match=field):
        distlog.ExchangeOptions(**{field: bad})
