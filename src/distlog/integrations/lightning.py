"""Lightning: cross-rank values for plain ``self.log`` calls, in one fused exchange per log step.

``Trainer(callbacks=[DistlogCallback(run_dir="runs/x")])`` is the whole change. On every rank
the callback builds a [Logger][distlog.Logger] at ``setup`` and wraps the module's ``log`` (so
``log_dict`` too): each value still goes to Lightning (progress bar, callback metrics,
checkpoint monitors) and is also buffered by distlog with the reduction Lightning was given.
At every ``log_every_n_steps`` optimizer step, at the end of each validation or test run and
at the end of each training epoch the callback flushes: every key is reduced over the buffered
calls and over the ranks that logged it, in one exchange, with no per-key collective and no
barrier. Global rank 0 writes the row at ``trainer.global_step``. ``on_step``/``on_epoch`` keep
Lightning's meaning: a training value logged with ``on_epoch=True`` is accumulated over the
epoch and written once, in the epoch's row.

[DistlogLightningLogger][distlog.integrations.lightning.DistlogLightningLogger] is the other
way in: a Lightning ``Logger`` that writes what Lightning already reduced (rank 0's values, or
``sync_dist=True`` ones) to distlog's run directory and sinks.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import warnings
from argparse import Namespace
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from distlog.errors import LogValueError
from distlog.integrations.common import OwnLoggerPerProcess, SinksArg, make_logger
from distlog.integrations.versions import require
from distlog.keys import check_key
from distlog.logger import Logger
from distlog.values import as_float, plain_tensor
from distlog.world import World

require("lightning.pytorch", "lightning", "lightning", "2.4", "3")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import Logger as LightningLoggerBase  # noqa: E402
from lightning.pytorch.loggers.logger import rank_zero_experiment  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402

__all__ = ["DistlogCallback", "DistlogLightningLogger", "reduction_of"]

# Where each optional argument of LightningModule.log sits when given by position, counted
# from ``prog_bar``: read from the installed Lightning, not written down by hand.
_LOG_POSITION = {
    name: i for i, name in enumerate(list(inspect.signature(pl.LightningModule.log).parameters)[3:])
}


def _lightning_default_levels() -> dict[str, tuple[bool, bool]]:
    """Lightning's default ``(on_step, on_epoch)`` for each hook that may log, read from the
    installed Lightning (empty if it keeps them elsewhere: ``_levels`` then uses its rule)."""
    try:
        from lightning.pytorch.trainer.connectors.logger_connector.fx_validator import (
            _FxValidator,
        )

        return {
            fx: (bool(options["default_on_step"]), bool(options["default_on_epoch"]))
            for fx, options in _FxValidator.functions.items()
            if options
        }
    except (ImportError, AttributeError, KeyError, TypeError):  # pragma: no cover
        return {}


_DEFAULT_LEVELS = _lightning_default_levels()
_RUN_START_HOOKS = ("on_train_start", "on_validation_start", "on_test_start")

_BY_NAME = {"mean": "mean", "avg": "mean", "sum": "sum", "min": "min", "max": "max"}
_BY_FUNCTION: dict[Any, str] = {
    torch.mean: "mean",
    torch.sum: "sum",
    torch.min: "min",
    torch.max: "max",
    torch.amin: "min",
    torch.amax: "max",
}


def reduction_of(name: str, reduce_fx: Any) -> str:
    """distlog's ``reduce`` for a Lightning ``reduce_fx``; a clear error for one it can't honour.

    Raises:
        LogValueError: ``reduce_fx`` is a callable other than ``torch.mean/sum/min/max``, or an
            unknown string. The message names the key.
    """
    if isinstance(reduce_fx, str) and reduce_fx.lower() in _BY_NAME:
        return _BY_NAME[reduce_fx.lower()]
    try:
        found = _BY_FUNCTION.get(reduce_fx)
    except TypeError:  # unhashable
        found = None
    if found is not None:
        return found
    raise LogValueError(
        f"self.log({name!r}, ..., reduce_fx={reduce_fx!r}): distlog reduces across ranks with "
        "mean, sum, min or max only; pass one of those (or torch.mean/sum/min/max), or log a "
        "torchmetrics Metric with self.distlog.log_metrics(...)"
    )


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


class DistlogCallback(OwnLoggerPerProcess, pl.Callback):
    """Give every ``self.log`` call of a LightningModule a cross-rank value, written by rank 0.

    Args:
        run_dir: the run directory (``metrics.jsonl``, ``config.json``, ``run.json``).
        sinks: more backends (wandb, TensorBoard, ...), or a function that makes them on
            global rank 0 only, given the Logger
            (``lambda logger: [WandbSink(project="x", id=logger.run_id)]``).
        system_metrics: also log every rank's step time, memory and CPU use (see
            [SystemMetrics][distlog.system.SystemMetrics]).
        log_every_n_steps: flush every this many optimizer steps; default: the Trainer's
            ``log_every_n_steps``.
        spread: keys (or True for all) whose per-rank spread is also written.
        lightning_log: which calls Lightning's own ``self.log`` also gets. ``"needed"`` (the
            default): ``prog_bar=True`` calls, keys that a callback or LR scheduler monitors
            (``ModelCheckpoint(monitor=...)``, ``EarlyStopping``, ...), and values distlog does
            not reduce (torchmetrics objects). True: every call (Lightning's loggers and
            ``trainer.callback_metrics`` then see everything, at Lightning's cost of about a
            millisecond a call). False: only what distlog does not reduce.
        logger_kwargs: passed on to [Logger][distlog.Logger] (``timeout``, ``console``, ...).

    What the module logs with ``logger=False`` is left to Lightning. During the sanity check
    nothing is recorded (Lightning discards those values too). A ``mean`` is weighted by the
    ``batch_size=`` given to ``self.log`` when one is given, else every call counts once.
    Values logged in the module's own ``on_train_batch_end`` (which Lightning runs after the
    callbacks') land in the next row. ``on_step``/``on_epoch`` (and their defaults for the hook
    that logs) mean what they mean to Lightning: a training value with ``on_epoch=True`` is kept
    per rank over the epoch and written once, reduced over every call of every rank, in a row at
    the epoch's last step that also holds what the module logs in its ``on_train_epoch_end``;
    with both, the keys are ``name_step`` and ``name_epoch``. The module reaches the Logger as
    ``self.distlog``, the callback as ``callback.logger``.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        sinks: SinksArg = None,
        *,
        system_metrics: bool = False,
        log_every_n_steps: int | None = None,
        spread: bool | Iterable[str] = False,
        lightning_log: bool | str = "needed",
        **logger_kwargs: Any,
    ) -> None:
        if lightning_log not in (True, False, "needed"):
            raise LogValueError(f"lightning_log={lightning_log!r}; choose True, False or 'needed'")
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise LogValueError(f"log_every_n_steps must be an int >= 1, got {log_every_n_steps!r}")
        self.run_dir = run_dir
        self._sinks = sinks if sinks is None or callable(sinks) else list(sinks)
        self._system_metrics = system_metrics
        self._forward_hooks: Any = None  # system/forward_s's hooks while training
        self._every = log_every_n_steps
        self._spread_all = spread is True
        self._spread = set() if isinstance(spread, bool) else set(spread)
        self._logger_kwargs = logger_kwargs
        self._logger: Logger | None = None
        self._module: Any = None
        self._stage: str | None = None
        self._last_flushed = -1
        self._warned: set[str] = set()
        self._lightning_log = lightning_log
        self._monitored: set[str] | None = None
        self._trainer: Any = None  # the Trainer running now (one callback may serve several)
        self._original_log: Callable[..., None] | None = None
        # "/dataloader_idx_N" while an evaluation loop with several dataloaders runs one, as
        # Lightning names such keys itself (two validation sets are never averaged together).
        self._dataloader_suffix = ""
        # This rank's running value of each training key logged with on_epoch=True, and the
        # step the epoch that still has to write them ended on.
        self._epoch: dict[str, _EpochValue] = {}
        self._epoch_end_step: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a spawned process (ddp_spawn): the module and Trainer stay behind too.
        return {
            **super().__getstate__(),
            "_trainer": None, "_module": None, "_original_log": None, "_forward_hooks": None,
        }  # fmt: skip

    @property
    def logger(self) -> Logger:
        """The distlog Logger of this rank (built at the Trainer's ``setup``)."""
        if self._logger is None:
            raise RuntimeError("DistlogCallback.logger exists from the Trainer's setup on")
        return self._logger

    # ------------------------------------------------------------------ set-up and the log hook
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._logger is None or self._logger.closed:
            self._logger = make_logger(
                self.run_dir,
                self._sinks,
                system_metrics=self._system_metrics,
                **self._logger_kwargs,
            )
            self._stage = stage
            self._last_flushed = -1
            self._epoch = {}
            self._epoch_end_step = None
        self._monitored = None  # callbacks and schedulers may differ between stages
        self._wrap(trainer, pl_module)

    def _wrap(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        module.distlog = self._logger  # type: ignore[assignment]  # the module's own handle
        if self._module is not module:
            self._unwrap()
            self._wrap_log(module)
        self._trainer = trainer

    def _wrap_log(self, module: pl.LightningModule) -> None:
        self._module = module
        original: Callable[..., None] = module.log
        self._original_log = original
        callback = self

        def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            reduce = reduction_of(name, _arg(args, kwargs, "reduce_fx", "mean"))
            trainer = callback._trainer
            if callback._dataloader_suffix and _arg(args, kwargs, "add_dataloader_idx", True):
                suffix = callback._dataloader_suffix
            else:
                suffix = ""
            ours = isinstance(value, torch.Tensor | numbers.Number)
            prog_bar = _arg(args, kwargs, "prog_bar", False)
            if not ours or callback._forward(trainer, name + suffix, prog_bar):
                original(name, value, *args, **kwargs)
            if trainer.sanity_checking or _arg(args, kwargs, "logger", None) is False:
                return
            on_step, on_epoch = _levels(
                getattr(module, "_current_fx_name", None),
                bool(trainer.training),
                _arg(args, kwargs, "on_step", None),
                _arg(args, kwargs, "on_epoch", None),
            )
            callback._record(
                name, suffix, value, reduce, _arg(args, kwargs, "batch_size", None),
                on_step=on_step, on_epoch=on_epoch, training=bool(trainer.training),
            )  # fmt: skip

        module.log = log  # type: ignore[method-assign]

    def _unwrap(self) -> None:
        """Give the module its own ``log`` back: after its Trainer is done it is an ordinary
        LightningModule again (another Trainer may test it without distlog)."""
        module, self._module = self._module, None
        if module is not None and self._original_log is not None:
            module.__dict__.pop("log", None)  # the instance attribute _wrap set
        self._original_log = None
        self._trainer = None

    def _forward(self, trainer: pl.Trainer, name: str, prog_bar: Any) -> bool:
        """Whether Lightning's own ``self.log`` should see this call too."""
        if self._lightning_log is True:
            return True
        if self._lightning_log is False:
            return False
        if prog_bar or trainer.state.fn in ("validate", "test"):
            return True  # trainer.validate()/test() return what Lightning logged: every key
        if self._monitored is None:
            self._monitored = _monitored_keys(trainer)
        return name in self._monitored

    def _record(
        self, name: str, suffix: str, value: Any, reduce: str, batch_size: Any, *,
        on_step: bool, on_epoch: bool, training: bool,
    ) -> None:  # fmt: skip
        """Buffer one ``self.log`` call under the key(s) Lightning's loggers would get.

        In training, ``on_step`` values go to the Logger (the next log step's row) and
        ``on_epoch`` values to this rank's running value for the epoch, handed to the Logger
        at the epoch's end; with both, the keys are ``name_step`` and ``name_epoch`` as
        Lightning names them. In validation and test every value is reduced over the run,
        Lightning's epoch value (``name_epoch`` when ``on_step`` is also given).
        """
        if not isinstance(value, torch.Tensor | numbers.Number):
            if name + suffix in self._warned:
                return
            self._warned.add(name + suffix)
            warnings.warn(
                f"distlog: self.log({name + suffix!r}, <{type(value).__name__}>) is left to "
                "Lightning (distlog reduces numbers and tensors); log a torchmetrics Metric "
                "with self.distlog.log_metrics(...)",
                stacklevel=3,
            )
            return
        if not (on_step or on_epoch):  # as Lightning says when it sees the call
            raise LogValueError(f"self.log({name!r}, on_step=False, on_epoch=False) is not useful")
        if self._logger is None or self._logger.closed:
            return
        if isinstance(value, torch.Tensor) and value.requires_grad:
            value = value.detach()  # as Lightning does: a buffered value must not hold the graph
        weight = batch_size if reduce == "mean" and isinstance(batch_size, int) else None
        spread = self._spread_all or name in self._spread or name + suffix in self._spread
        both = on_step and on_epoch
        if training and on_epoch:
            key = (name + "_epoch" if both else name) + suffix
            self._epoch_value(key, value, reduce, weight, spread)
        if training and not on_step:
            return
        key = (name + ("_step" if training else "_epoch") if both else name) + suffix
        self._logger.log_scalar(
            key, value, reduce, weight=weight, spread=spread or key in self._spread
        )

    def _epoch_value(
        self, key: str, value: Any, reduce: str, weight: int | None, spread: bool
    ) -> None:
        """Fold one training call into this rank's value of ``key`` for the epoch (a tensor
        stays on its device: no host sync), checked now as the Logger would check it."""
        running = self._epoch.get(key)
        if running is None:
            check_key(key)
            running = self._epoch[key] = _EpochValue(reduce, spread or key in self._spread)
        elif running.reduce != reduce:
            raise LogValueError(
                f"self.log({key!r}, ..., reduce_fx={reduce!r}) after reduce_fx="
                f"{running.reduce!r} in the same epoch: log a key with one reduction"
            )
        if isinstance(value, torch.Tensor):
            value = plain_tensor(key, value).reshape(())
            if value.device.type == "cpu":
                value = float(value.item())  # no device to wait for
            elif value.dtype != torch.float64:
                value = value.float()
        else:
            value = as_float(key, value)
        running.add(value, 1 if weight is None else weight)

    # ------------------------------------------------------------------ flushes
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._monitored = _monitored_keys(trainer)  # the schedulers exist by now
        if self._logger is not None and self._logger.system is not None:
            self._logger.system.start(trainer.global_step)  # a restored job's step included
            # system/forward_s: the module the strategy runs, inside DDP's wrapper, so DDP's
            # buffer broadcast (which waits for the slowest rank) is not counted; without a
            # wrapper, training_step up to its backward (on_train_batch_start, below)
            model = getattr(trainer.strategy, "model", None)
            if isinstance(model, torch.nn.Module) and model is not pl_module:
                if self._forward_hooks is None:
                    self._forward_hooks = self._logger.system.time_forward(model)

    def _evaluating(self, trainer: pl.Trainer, loaders: Any, dataloader_idx: int) -> None:
        several = isinstance(loaders, list | tuple) and len(loaders) > 1
        self._dataloader_suffix = f"/dataloader_idx_{dataloader_idx}" if several else ""

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        loaders = trainer.num_sanity_val_batches if trainer.sanity_checking else None
        self._evaluating(trainer, loaders or trainer.num_val_batches, dataloader_idx)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._evaluating(trainer, trainer.num_test_batches, dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dataloader_suffix = ""  # what the module logs at the epoch's end has no index

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dataloader_suffix = ""

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._forward_hooks is None and self._logger is not None:
            if self._logger.system is not None:  # no wrapper: training_step up to its backward
                self._logger.system.forward.abandon()  # a batch training_step skipped
                self._logger.system.forward.begin()

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any
    ) -> None:
        if self._forward_hooks is None and self._logger is not None:
            if self._logger.system is not None:
                self._logger.system.forward.end()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        every = self._every or int(getattr(trainer, "log_every_n_steps", 50) or 0)
        if every <= 0:  # Trainer(barebones=True): no logging within the epoch
            return
        step = trainer.global_step
        if step > 0 and step % every == 0 and step != self._last_flushed:
            self._flush(step)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush_epoch(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs this before the module's own on_train_epoch_end (whose values belong to
        # this epoch's row too): the row is written at the next epoch's start or at on_train_end,
        # at the step this epoch ended on.
        self._epoch_end_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._forward_hooks is not None:
            self._forward_hooks.remove()
            self._forward_hooks = None
        self._flush_epoch(trainer)

    def _flush_epoch(self, trainer: pl.Trainer) -> None:
        """Write the epoch row that ended at ``_epoch_end_step``: every rank's value of each
        ``on_epoch`` key, weighted so that the cross-rank reduction is the reduction over
        every call of every rank. The ranks agree first whether any of them has one (a key
        only some ranks log still gets its row; no epoch keys at all: no row, no flush)."""
        step, self._epoch_end_step = self._epoch_end_step, None
        if step is None:
            return
        epoch, self._epoch = self._epoch, {}
        if not trainer.strategy.reduce_boolean_decision(bool(epoch), all=False):
            return
        if self._logger is None or self._logger.closed:
            return
        for key, running in epoch.items():
            value, weight = running.result()
            spread = running.spread
            self._logger.log_scalar(key, value, running.reduce, weight=weight, spread=spread)
        self._flush(step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._flush(trainer.global_step)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer.global_step)

    def _flush(self, step: int) -> None:
        if self._logger is not None and not self._logger.closed:
            self._logger.flush(step=step)
            self._last_flushed = step

    # ------------------------------------------------------------------ the end
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._dataloader_suffix = ""
        if self._logger is not None and stage == self._stage and not self._logger.closed:
            self._logger.finish(step=max(trainer.global_step, self._logger.step))
        if self._logger is None or self._logger.closed:
            self._unwrap()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._logger is not None:
            self._logger.finish(exit_code=_exit_code(exception) or 1)
        self._unwrap()


class _EpochValue:
    """One rank's running value of a training key logged with ``on_epoch=True``: the weighted
    sum and the weight (``mean``), the sum, or the extreme, as a float or a device tensor."""

    __slots__ = ("reduce", "spread", "total", "weight")

    def __init__(self, reduce: str, spread: bool) -> None:
        self.reduce = reduce
        self.spread = spread
        self.total: Any = None
        self.weight = 0

    def add(self, value: Any, weight: int) -> None:
        total = self.total
        if self.reduce == "mean":
            value = value * weight
            self.weight += weight
        if total is None:
            self.total = value
        elif self.reduce in ("mean", "sum"):
            self.total = total + value
        elif isinstance(total, torch.Tensor) or isinstance(value, torch.Tensor):
            device = (total if isinstance(total, torch.Tensor) else value).device
            pair = torch.as_tensor(total, device=device), torch.as_tensor(value, device=device)
            self.total = torch.minimum(*pair) if self.reduce == "min" else torch.maximum(*pair)
        elif math.isnan(total) or math.isnan(value):
            self.total = math.nan  # as torch.minimum/maximum: a NaN wins
        else:
            self.total = min(total, value) if self.reduce == "min" else max(total, value)

    def result(self) -> tuple[Any, int | None]:
        """The value and weight to log: a mean over this rank's calls with their total weight
        (the Logger's weighted mean over the ranks is then the mean over every call)."""
        if self.reduce != "mean":
            return self.total, None
        return (self.total / self.weight if self.weight else self.total), self.weight


def _levels(fx: str | None, training: bool, on_step: Any, on_epoch: Any) -> tuple[bool, bool]:
    """``on_step``/``on_epoch`` as Lightning resolves them for the hook ``fx`` that logs: given
    ones as they are, the others by the hook's defaults (``training_step`` and the batch hooks of
    training: per step; epoch hooks, validation and test: per epoch)."""
    default = _DEFAULT_LEVELS.get(fx or "")
    if default is None:
        epoch_hook = fx is not None and ("epoch" in fx or fx in _RUN_START_HOOKS)
        default = (True, False) if training and not epoch_hook else (False, True)
    return (
        default[0] if on_step is None else bool(on_step),
        default[1] if on_epoch is None else bool(on_epoch),
    )


def _monitored_keys(trainer: pl.Trainer) -> set[str]:
    """Keys Lightning's callbacks and LR schedulers read from ``trainer.callback_metrics``:
    monitors, and the metrics a ``ModelCheckpoint`` names its files with (``{val/acc:.2f}``;
    Lightning writes 0 for a name it lacks)."""
    keys = {getattr(cb, "monitor", None) for cb in trainer.callbacks}  # type: ignore[attr-defined]
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        filename = getattr(cb, "filename", None)
        if isinstance(filename, str):
            keys.update(re.findall(r"\{(.*?)[:\}]", filename))  # Lightning's own pattern
    for config in getattr(trainer, "lr_scheduler_configs", None) or []:
        keys.add(getattr(config, "monitor", None))
    return {k for k in keys if isinstance(k, str)}


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str, default: Any) -> Any:
    """An argument of ``LightningModule.log(name, value, prog_bar, logger, on_step, on_epoch,
    reduce_fx, enable_graph, sync_dist, sync_dist_group, add_dataloader_idx, batch_size, ...)``
    given by keyword or by position."""
    if name in kwargs:
        return kwargs[name]
    index = _LOG_POSITION[name]
    return args[index] if len(args) > index else default


def _global_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class DistlogLightningLogger(OwnLoggerPerProcess, LightningLoggerBase):
    """A Lightning ``Logger`` that writes to distlog's run directory and sinks, from rank 0.

    Lightning calls its loggers on global rank 0 only, with values it has already reduced
    (``sync_dist=True``) or rank 0's own. Use it for distlog's run directory, config and
    backends; use [DistlogCallback][distlog.integrations.lightning.DistlogCallback] for values
    reduced across ranks without ``sync_dist``.

    Args:
        run_dir: the run directory (``metrics.jsonl``, ``config.json``, ``run.json``).
        sinks: more backends (wandb, TensorBoard, ...), or a function that makes them on
            global rank 0 only, given the Logger
            (``lambda logger: [WandbSink(project="x", id=logger.run_id)]``).
        name: the experiment name Lightning shows.
        logger_kwargs: passed on to [Logger][distlog.Logger].
    """

    def __init__(
        self,
        run_dir: str | Path = "runs/lightning",
        sinks: SinksArg = None,
        *,
        name: str = "distlog",
        **logger_kwargs: Any,
    ) -> None:
        super().__init__()
        self._run_dir = Path(run_dir)
        self._sinks = sinks if sinks is None or callable(sinks) else list(sinks)
        self._name = name
        self._logger_kwargs = logger_kwargs
        self._logger: Logger | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        """The run's id on rank 0 (Lightning broadcasts paths built from it); "0" elsewhere."""
        if _global_rank() != 0:
            return "0"
        return self.experiment.run_id or "0"

    @property
    def save_dir(self) -> str:
        """The run directory written (on rank 0 the one actually claimed: a second launch
        into a directory holding a run writes the next version, ``run-2``)."""
        if _global_rank() == 0 and self.experiment.run_dir is not None:
            return str(self.experiment.run_dir)
        return str(self._run_dir)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> Logger:
        """The rank-0 distlog Logger (a world of one: Lightning calls loggers on rank 0 only);
        a no-op stand-in on the other ranks."""
        if self._logger is None:
            size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            self._logger = make_logger(
                self._run_dir,
                self._sinks,
                world=World(world_size=size),
                **self._logger_kwargs,
            )
        return self._logger

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any
    ) -> None:
        plain = vars(params) if isinstance(params, Namespace) else dict(params)
        self.experiment.log_config(plain)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        logger = self.experiment
        logger.log_precomputed(metrics)
        logger.flush(step=step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._logger is not None and not self._logger.closed:
            self._logger.finish(exit_code=0 if status == "success" else 1)
