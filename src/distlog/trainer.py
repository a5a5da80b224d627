"""A small DDP-aware training harness for the seed's API: ``BaseTrainer``, its config, callbacks.

Not a second Lightning: one loop you can read in a minute. Subclass [BaseTrainer][distlog.trainer.BaseTrainer], build
``self.model`` and ``self.optimizer`` in [configure][distlog.trainer.BaseTrainer.configure], return a dataloader from
[train_dataloader][distlog.trainer.BaseTrainer.train_dataloader], and return ``{"loss": loss, ...}`` from
[training_step][distlog.trainer.BaseTrainer.training_step]::

    @dataclass(kw_only=True)
    class MyConfig(BaseTrainerConfig, WandBLoggerConfigMixin): ...

    class MyTrainer(BaseTrainer, WandBLoggerMixin):
        def configure(self): ...
        def train_dataloader(self): ...
        def training_step(self, batch, batch_idx): ...

    MyTrainer(MyConfig(experiment="run1", max_steps=100)).fit()

With more than one process, ``self.model`` is wrapped in DistributedDataParallel (attributes of
the wrapped model stay reachable: ``self.model.generate(...)`` works) and map-style datasets are
sharded with a ``DistributedSampler``. The harness flushes the logger every
``logging_parameters.log_every_n_steps`` optimizer steps and after each validation, and finishes
it when ``fit`` ends, normally (exit code 0) or not (exit code 1, no collective).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from distlog.errors import LogTypeError, LogValueError
from distlog.lifecycle import exit_code_of
from distlog.mixins import (
    AbstractTrainer,
    AbstractTrainerConfig,
    LoggerMixin,
    check_bool,
    check_int,
)

__all__ = ["BaseTrainer", "BaseTrainerConfig", "Callback"]


class Callback:
    """Hooks called by [BaseTrainer][distlog.trainer.BaseTrainer]; override the ones you need. All default to no-ops."""

    def on_fit_start(self, trainer: BaseTrainer) -> None: ...
    def on_train_epoch_start(self, trainer: BaseTrainer) -> None: ...
    def on_train_batch_start(self, trainer: BaseTrainer, batch: Any, batch_idx: int) -> None: ...
    def on_train_batch_end(
        self, trainer: BaseTrainer, batch: Any, batch_idx: int, outputs: dict[str, Any]
    ) -> None: ...
    def on_train_epoch_end(self, trainer: BaseTrainer) -> None: ...
    def on_validation_epoch_start(self, trainer: BaseTrainer) -> None: ...
    def on_validation_batch_end(
        self, trainer: BaseTrainer, batch: Any, batch_idx: int, outputs: Any
    ) -> None: ...
    def on_validation_epoch_end(self, trainer: BaseTrainer) -> None: ...
    def on_train_end(self, trainer: BaseTrainer) -> None: ...
    def on_exception(self, trainer: BaseTrainer, exception: BaseException) -> None: ...


@dataclass(kw_only=True)
class BaseTrainerConfig(AbstractTrainerConfig):
    """When to stop and how often to validate. ``max_steps`` counts optimizer steps.

    Training stops at ``max_steps`` or after ``max_epochs`` epochs, whichever comes first.
    """

    max_steps: int | None = None
    max_epochs: int | None = None
    val_every_n_epochs: int = 1
    seed: int | None = 0
    find_unused_parameters: bool = False
    callbacks: list[Callback] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_epochs"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise LogValueError(
                    f"config.{name} must be a non-negative int or None, got {value!r}"
                )
        if self.max_steps is None and self.max_epochs is None:
            self.max_epochs = 1
        check_int("config", "val_every_n_epochs", self.val_every_n_epochs, 1)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise LogTypeError(
                f"config.seed must be an int or None, got {type(self.seed).__name__} {self.seed!r}"
            )
        check_bool("config", "find_unused_parameters", self.find_unused_parameters)
        if not isinstance(self.callbacks, list | tuple):
            raise LogTypeError(
                f"config.callbacks must be a list of Callback instances, got "
                f"{type(self.callbacks).__name__}"
            )
        self.callbacks = list(self.callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise LogTypeError(
                    f"config.callbacks must hold Callback instances, got {type(cb).__name__}"
                )
        post_init = getattr(super(), "__post_init__", None)
        if post_init is not None:
            post_init()


class _DDP(DistributedDataParallel):
    """DDP that reads like the model it wraps, so user code works the same at any world size:
    missing attributes are looked up on the model (``self.model.generate()``,
    ``self.model.embeddings``), and ``named_parameters`` gives the model's own names (metric keys
    such as ``weights/{name}`` don't gain a ``module.`` prefix). ``state_dict`` is DDP's own."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)

    def named_parameters(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.named_parameters(*args, **kwargs)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class BaseTrainer(AbstractTrainer):
    """The loop: configure, shard, step, log, validate, finish. See the module docstring.

    State kept for user code and callbacks: ``global_step`` (optimizer steps done),
    ``current_epoch``, ``world``, ``project``, ``group``, ``experiment``, ``model``,
    ``optimizer``, ``lr_scheduler`` (optional, stepped after each optimizer step). After
    ``configure`` the model is moved to ``world.device`` (``cuda:LOCAL_RANK`` with CUDA) and
    batches are moved there too.
    ``configure`` may restore a checkpoint and set ``global_step`` / ``current_epoch``: the
    loop continues from there.
    """

    config: BaseTrainerConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any = None

    def __init__(self, config: BaseTrainerConfig) -> None:
        if not isinstance(config, BaseTrainerConfig):
            raise TypeError(
                f"{type(self).__name__} expects a BaseTrainerConfig, got {type(config).__name__}"
            )
        super().__init__(config)
        self.callbacks: list[Callback] = list(config.callbacks)
        if config.seed is not None:
            torch.manual_seed(config.seed)
        self.configure()
        self._check_configured()
        self.model.to(self.world.device)  # in place: the optimizer keeps its parameters
        if self.world.is_distributed:
            self.model = self._wrap_ddp(self.model)
        self._train_loader = self._loader("train_dataloader", shuffle_default=True)
        self._val_loader = self._loader("val_dataloader", shuffle_default=False)

    # -- what subclasses write ------------------------------------------------------------
    def configure(self) -> None:
        """Build ``self.model`` and ``self.optimizer`` (and optionally ``self.lr_scheduler``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure()")

    def train_dataloader(self) -> Iterable[Any]:
        """The training data: a method returning it, or an attribute set in ``configure``.

        Called once, at construction; from then on ``self.train_dataloader`` is the (sharded)
        loader itself, as in the seed's API.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement train_dataloader()")

    def val_dataloader(self) -> Iterable[Any] | None:
        """Optional validation data, like ``train_dataloader``: after construction
        ``self.val_dataloader`` is the loader (or None), so ``for batch in self.val_dataloader``
        works in hooks. Validation runs when this and ``validation_step`` exist."""
        return None

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement training_step()")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        return None

    # Trainer-level hooks with the seed's names; callbacks get the same moments.
    def on_train_batch_end(self, batch: Any, batch_idx: int, outputs: dict[str, Any]) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_train_end(self) -> None: ...

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> None:
        """Train until ``max_steps`` / ``max_epochs``; always finishes the logger."""
        try:
            self._fit()
        except BaseException as exc:
            for cb in self.callbacks:
                try:
                    cb.on_exception(self, exc)
                except Exception:
                    pass
            # The exception's own exit status (sys.exit(n) -> n, Ctrl-C -> 130), never 0: a
            # clean-looking code would make finish() attempt a collective other ranks may skip.
            self._finish_logging(exit_code_of(exc) or 1)
            raise
        self._finish_logging(0)

    def _fit(self) -> None:
        config = self.config
        train_loader = self._train_loader
        if train_loader is None:
            raise NotImplementedError(f"{type(self).__name__} must implement train_dataloader()")
        has_validation = type(self).validation_step is not BaseTrainer.validation_step
        val_loader = self._val_loader if has_validation else None
        self._call("on_fit_start")
        max_epochs: float
        if config.max_epochs is not None:
            max_epochs = config.max_epochs
        elif config.max_steps is None:  # a config whose __post_init__ skipped ours: one epoch
            max_epochs = 1
        else:
            max_epochs = math.inf
        while self.current_epoch < max_epochs and not self._done():
            self._call("on_train_epoch_start")
            sampler = getattr(train_loader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self.current_epoch)
            self.model.train()
            batches = 0
            for batch_idx, batch in enumerate(train_loader):
                batches += 1
                self._train_batch(batch, batch_idx)
                if self._done():
                    break
            if batches == 0:
                self._empty_epoch(train_loader)
            self.on_train_epoch_end()
            self._call("on_train_epoch_end")
            if val_loader is not None and (self.current_epoch + 1) % config.val_every_n_epochs == 0:
                self.validate(val_loader)
            self.current_epoch += 1
        self.on_train_end()
        self._call("on_train_end")

    def _train_batch(self, batch: Any, batch_idx: int) -> None:
        batch = _to_device(batch, self.world.device)
        self._call("on_train_batch_start", batch, batch_idx)
        outputs = self.training_step(batch, batch_idx)
        loss = self._loss_of(outputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.global_step += 1
        self.on_train_batch_end(batch, batch_idx, outputs)
        self._call("on_train_batch_end", batch, batch_idx, outputs)
        if isinstance(self, LoggerMixin):
            if self.global_step % self.logging_parameters.log_every_n_steps == 0:
                self.flush_logs()

    def validate(self, loader: Iterable[Any] | None = None) -> None:
        """One pass over the validation data under ``no_grad``, then a flush."""
        if loader is None:
            loader = self._val_loader
            if loader is None:
                return
        self._call("on_validation_epoch_start")
        self.model.eval()
        with torch.no_grad():
            for batch_idx, batch in enumerate(loader):
                batch = _to_device(batch, self.world.device)
                outputs = self.validation_step(batch, batch_idx)
                self._call("on_validation_batch_end", batch, batch_idx, outputs)
        self.on_validation_epoch_end()
        self._call("on_validation_epoch_end")
        self.model.train()
        if isinstance(self, LoggerMixin):
            self.flush_logs()

    # -- helpers --------------------------------------------------------------------------
    def _empty_epoch(self, loader: Any) -> None:
        """An epoch yielded no batch: training would stand still (with ``max_steps``, forever)."""
        config = self.config
        if isinstance(loader, Iterator):
            why = (
                f"the training data is a one-shot iterator ({type(loader).__name__}), exhausted "
                "after its first pass: return a DataLoader or another re-iterable object from "
                "train_dataloader"
            )
        else:
            size = len(loader) if hasattr(loader, "__len__") else None
            why = (
                f"the training data ({type(loader).__name__}"
                + (f" of {size} batches" if size is not None else "")
                + ") is empty on this rank (drop_last=True with fewer samples than batch_size, "
                "or fewer than world_size x batch_size with a DistributedSampler?)"
            )
        raise RuntimeError(
            f"epoch {self.current_epoch} yielded no batches on rank {self.world.rank} at "
            f"global_step {self.global_step} (max_steps={config.max_steps}, "
            f"max_epochs={config.max_epochs}): {why}. Stopping instead of looping over nothing."
        )

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.global_step >= self.config.max_steps

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _loss_of(self, outputs: Any) -> torch.Tensor:
        if not isinstance(outputs, Mapping) or "loss" not in outputs:
            raise LogTypeError(
                f"training_step must return a dict with a 'loss' tensor, got "
                f"{type(outputs).__name__}"
                + (f" with keys {sorted(outputs)}" if isinstance(outputs, Mapping) else "")
            )
        loss = outputs["loss"]
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise LogTypeError(
                "training_step's 'loss' must be a one-element tensor that requires grad, got "
                + (
                    f"a tensor of shape {tuple(loss.shape)} (requires_grad={loss.requires_grad})"
                    if isinstance(loss, torch.Tensor)
                    else type(loss).__name__
                )
            )
        return loss

    def _check_configured(self) -> None:
        if not isinstance(getattr(self, "model", None), nn.Module):
            raise TypeError("configure() must set self.model to a torch.nn.Module")
        if not isinstance(getattr(self, "optimizer", None), torch.optim.Optimizer):
            raise TypeError("configure() must set self.optimizer to a torch.optim.Optimizer")

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if isinstance(model, DistributedDataParallel):
            return model
        device = self.world.device
        kwargs: dict[str, Any] = {"find_unused_parameters": self.config.find_unused_parameters}
        if device.type == "cuda":
            kwargs["device_ids"] = [device.index]
        return _DDP(model, **kwargs)

    def _loader(self, name: str, *, shuffle_default: bool) -> Any:
        """Resolve ``self.<name>`` (a method or an attribute) once into a sharded loader and
        keep it as the instance attribute ``self.<name>``, the seed's form."""
        if name not in vars(self) and getattr(type(self), name) is getattr(BaseTrainer, name):
            return None  # not defined (train_dataloader: fit() says so)
        source = getattr(self, name)
        if callable(source) and not isinstance(source, (DataLoader, Iterable)):
            source = source()
        loader = self._shard(source, shuffle_default=shuffle_default)
        setattr(self, name, loader)  # shadows the method on this instance
        return loader

    def _shard(self, loader: Any, *, shuffle_default: bool) -> Any:
        """A DataLoader over a map-style dataset gets a DistributedSampler when world > 1.

        Loaders that already use one, iterable datasets and plain iterables are left alone.
        """
        if not self.world.is_distributed or not isinstance(loader, DataLoader):
            return loader
        if isinstance(loader.dataset, IterableDataset):
            return loader
        if isinstance(loader.sampler, DistributedSampler):
            return loader
        if loader.batch_size is None:  # a custom batch_sampler: the user shards it
            return loader
        shuffle = isinstance(loader.sampler, RandomSampler) if shuffle_default else False
        sampler: DistributedSampler[Any] = DistributedSampler(
            loader.dataset,
            num_replicas=self.world.world_size,
            rank=self.world.rank,
            shuffle=shuffle,
            seed=self.config.seed or 0,
            drop_last=loader.drop_last,
        )
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
        )

    def _finish_logging(self, exit_code: int) -> None:
        if isinstance(self, LoggerMixin):
            self.finish(exit_code=exit_code)
