"""The seed's logger mixins (``LoggerMixin``, ``WandBLoggerMixin`` and their configs), thin over
[Logger][distlog.Logger].

A trainer mixes them in (``class MyTrainer(BaseTrainer, WandBLoggerMixin)``) and logs with
``self.log_scalar``, ``self.log_images`` and friends on every rank. Scalars go through the fused
cross-rank aggregation; the harness (`distlog.trainer`) flushes every
``logging_parameters.log_every_n_steps``. Only global rank 0 writes: the local run log always,
and Weights & Biases with [WandBLoggerMixin][distlog.mixins.WandBLoggerMixin]. Without wandb installed, [LoggerMixin][distlog.mixins.LoggerMixin]
alone writes the local run log, so the same trainer runs anywhere.

The classes are cooperative: each ``__init__`` takes the config and calls ``super().__init__``,
so they combine in either order with [BaseTrainer][distlog.trainer.BaseTrainer].
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distlog import runlog
from distlog.errors import LoggerClosedError, LogTypeError, LogValueError, RunDirError
from distlog.logger import Logger
from distlog.sinkset import SINK_TIMEOUT_S
from distlog.world import World, init_distributed
from distlog.writer import NONFINITE_POLICIES

__all__ = [
    "AbstractTrainer",
    "AbstractTrainerConfig",
    "LoggerConfigMixin",
    "LoggerMixin",
    "LoggingParameters",
    "MLflowLoggerConfigMixin",
    "MLflowLoggerMixin",
    "MlflowLoggingParameters",
    "TensorBoardLoggerMixin",
    "WandBLoggerConfigMixin",
    "WandBLoggerMixin",
    "WandbLoggingParameters",
]


# ------------------------------------------------------------------------------ checks
# Bad config values raise when the config is built, naming the field: on every rank alike
# (every rank builds the same config), before any collective.
def _type_error(owner: str, name: str, value: Any, wanted: str) -> LogTypeError:
    return LogTypeError(f"{owner}.{name} must be {wanted}, got {type(value).__name__} {value!r}")


def check_bool(owner: str, name: str, value: Any) -> None:
    """``value`` is True or False (not a string such as ``"false"`` from YAML or the shell)."""
    if not isinstance(value, bool):
        raise _type_error(owner, name, value, "True or False")


def check_int(owner: str, name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    """``value`` is an int (not a bool) of at least ``minimum``, or None when ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(owner, name, value, "an int" + (" or None" if optional else ""))
    if value < minimum:
        raise LogValueError(f"{owner}.{name} must be >= {minimum}, got {value}")


def check_seconds(owner: str, name: str, value: Any) -> None:
    """``value`` is a finite number of seconds above 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(owner, name, value, "a number of seconds")
    if not (math.isfinite(value) and value > 0):
        raise LogValueError(f"{owner}.{name} must be a finite number of seconds > 0, got {value}")


def check_str(owner: str, name: str, value: Any, *, optional: bool = True) -> None:
    """``value`` is a non-empty string (or None when ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise _type_error(owner, name, value, "a string" + (" or None" if optional else ""))
    if not value:
        raise LogValueError(f"{owner}.{name} must not be empty")


def check_path(owner: str, name: str, value: Any) -> str | None:
    """``value`` is a path (a string or ``os.PathLike``) or None; returned as a string."""
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise _type_error(owner, name, value, "a path (str or pathlib.Path) or None")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise LogValueError(f"{owner}.{name} must be a non-empty path, got {value!r}")
    return path


def _post_init_next(config: Any, cls: type) -> None:
    """Run the next ``__post_init__`` in ``config``'s MRO after ``cls``'s, if any (configs
    combine in any order, so each calls the next)."""
    post_init = getattr(super(cls, config), "__post_init__", None)
    if post_init is not None:
        post_init()


# ------------------------------------------------------------------------------ configs
@dataclass(kw_only=True)
class AbstractTrainerConfig:
    """What every trainer and mixin knows: names of the run, and the process group backend."""

    project: str = "distlog"
    group: str | None = None
    experiment: str = "run"
    backend: str | None = None
    """``torch.distributed`` backend when distlog starts the process group (default: nccl with
    CUDA, else gloo). Ignored when the group already exists."""

    def __post_init__(self) -> None:
        check_str("config", "project", self.project, optional=False)
        check_str("config", "group", self.group)
        check_str("config", "experiment", self.experiment, optional=False)
        check_str("config", "backend", self.backend)
        _post_init_next(self, AbstractTrainerConfig)


@dataclass(kw_only=True)
class LoggingParameters:
    """How and where a trainer logs.

    ``enabled=False`` makes every ``log_*`` call a no-op (no run directory, no collective).
    ``run_dir=None`` (the default) gives each launch its own run directory
    ``runs/<project>/<experiment>/<YYYYmmdd-HHMMSS>``; a restarted job (torchrun
    ``--max-restarts``, SLURM requeue) continues the one its launch started. ``resume_from``
    continues an earlier run on purpose: ``"latest"``, a run id or a version's name. An
    explicit ``run_dir`` is the run directory itself, under
    [Logger][distlog.Logger]'s rule (a new launch of a taken directory writes
    ``<run_dir>-2``; ``resume_from`` set continues it).

    Every value is checked when the parameters are built: a LogTypeError or LogValueError
    naming the field (``enabled="false"``, ``timeout=-1``, ``nonfinite="bogus"``...). A
    ``pathlib.Path`` ``run_dir`` is kept as its string.
    """

    enabled: bool = True
    log_every_n_steps: int = 10
    run_dir: str | None = None
    resume_from: str | None = None
    console: bool = False
    async_write: bool = True
    timeout: float = 300.0
    nonfinite: str = "warn"
    sink_timeout: float | None = SINK_TIMEOUT_S

    def __post_init__(self) -> None:
        owner = "logging_parameters"
        check_bool(owner, "enabled", self.enabled)
        check_int(owner, "log_every_n_steps", self.log_every_n_steps, 1)
        self.run_dir = check_path(owner, "run_dir", self.run_dir)
        check_str(owner, "resume_from", self.resume_from)
        check_bool(owner, "console", self.console)
        check_bool(owner, "async_write", self.async_write)
        check_seconds(owner, "timeout", self.timeout)
        if self.sink_timeout is not None:
            check_seconds(owner, "sink_timeout", self.sink_timeout)
        if self.nonfinite not in NONFINITE_POLICIES:
            raise LogValueError(
                f"{owner}.nonfinite must be one of {', '.join(map(repr, NONFINITE_POLICIES))}, "
                f"got {self.nonfinite!r}"
            )


@dataclass(kw_only=True)
class WandbLoggingParameters(LoggingParameters):
    """Weights & Biases settings. ``None`` means: the trainer's ``project`` / ``group`` /
    ``experiment`` for ``project`` / ``group`` / ``name``; ``mode=None`` lets ``WANDB_MODE``
    decide; ``id=None`` means ``WANDB_RUN_ID`` if set, else the run's own id from
    ``<run_dir>/run.json`` (``logger.run_id``), so a torchrun restart (``--max-restarts``) of
    the same run directory continues the same wandb run. An explicit ``id`` (or
    ``WANDB_RUN_ID``) is recorded in ``run.json`` and reused by later starts of that directory.
    """

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    id: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None
    dir: str | None = None
    resume: str = "allow"
    init_timeout: float = 90.0
    step_metric: str = "trainer/global_step"
    settings: dict[str, Any] = field(default_factory=dict)
    """Extra ``wandb.Settings``; a key or value wandb rejects raises on every rank when the
    trainer is built (wandb must be installed to check them)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = "logging_parameters"
        for name in ("project", "entity", "group", "name", "id", "mode"):
            check_str(owner, name, getattr(self, name))
        self.dir = check_path(owner, "dir", self.dir)
        if isinstance(self.tags, str | bytes) or not isinstance(self.tags, list | tuple):
            raise LogTypeError(
                f"{owner}.tags must be a list of strings, got {type(self.tags).__name__} "
                f"{self.tags!r}"
                + (
                    f"; for one tag write tags=[{self.tags!r}]"
                    if isinstance(self.tags, str)
                    else ""
                )
            )
        self.tags = list(self.tags)
        bad = [t for t in self.tags if not isinstance(t, str) or not t]
        if bad:
            raise LogTypeError(f"{owner}.tags must hold non-empty strings, got {bad!r}")
        if not isinstance(self.resume, str | bool):
            raise _type_error(owner, "resume", self.resume, "a string ('allow', 'must', ...)")
        check_seconds(owner, "init_timeout", self.init_timeout)
        check_str(owner, "step_metric", self.step_metric, optional=False)
        if not isinstance(self.settings, Mapping) or not all(
            isinstance(k, str) for k in self.settings
        ):
            raise _type_error(owner, "settings", self.settings, "a dict of wandb setting names")
        self.settings = dict(self.settings)


@dataclass(kw_only=True)
class MlflowLoggingParameters(LoggingParameters):
    """MLflow settings. ``tracking_uri=None`` lets MLflow decide (``MLFLOW_TRACKING_URI``,
    else ``./mlruns``); ``experiment`` and ``run_name`` default to the trainer's ``project``
    and ``experiment``. A store not reached within ``init_timeout`` seconds: one warning, and
    the job goes on with the local run log."""

    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    init_timeout: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = "logging_parameters"
        for name in ("tracking_uri", "experiment", "run_name"):
            check_str(owner, name, getattr(self, name))
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise _type_error(owner, "tags", self.tags, "a dict of strings to strings")
        self.tags = dict(self.tags)
        check_seconds(owner, "init_timeout", self.init_timeout)


@dataclass(kw_only=True)
class LoggerConfigMixin(AbstractTrainerConfig):
    logging_parameters: LoggingParameters = field(default_factory=LoggingParameters)

    def __post_init__(self) -> None:
        if not isinstance(self.logging_parameters, LoggingParameters):
            raise _type_error(
                "config",
                "logging_parameters",
                self.logging_parameters,
                "a LoggingParameters (or WandbLoggingParameters, MlflowLoggingParameters)",
            )
        _post_init_next(self, LoggerConfigMixin)


@dataclass(kw_only=True)
class WandBLoggerConfigMixin(LoggerConfigMixin):
    logging_parameters: WandbLoggingParameters = field(default_factory=WandbLoggingParameters)


@dataclass(kw_only=True)
class MLflowLoggerConfigMixin(LoggerConfigMixin):
    logging_parameters: MlflowLoggingParameters = field(default_factory=MlflowLoggingParameters)


# ------------------------------------------------------------------------------ trainers
class AbstractTrainer:
    """The state every mixin relies on: ``config``, ``world``, run names and counters.

    Sets itself up once, however many cooperating classes call it.
    """

    config: AbstractTrainerConfig
    world: World
    global_step: int
    current_epoch: int

    def __init__(self, config: AbstractTrainerConfig) -> None:
        super().__init__()
        if getattr(self, "_abstract_trainer_ready", False):
            return
        if not isinstance(config, AbstractTrainerConfig):
            raise TypeError(
                f"{type(self).__name__} expects a config dataclass derived from "
                f"AbstractTrainerConfig (e.g. BaseTrainerConfig), got {type(config).__name__}"
            )
        self.config = config
        self.world = init_distributed(config.backend)
        self.global_step = 0
        self.current_epoch = 0
        self._abstract_trainer_ready = True

    @property
    def project(self) -> str:
        return self.config.project

    @property
    def group(self) -> str | None:
        return self.config.group

    @property
    def experiment(self) -> str:
        return self.config.experiment


class LoggerMixin(AbstractTrainer):
    """Backend-neutral logging for a trainer, over one [Logger][distlog.Logger].

    Every rank calls the ``log_*`` methods (they are cheap and never communicate); values are
    reduced across ranks at each flush and written by global rank 0 to the local run log and
    any tracker a subclass adds with [make_sinks][distlog.mixins.LoggerMixin.make_sinks].
    """

    config: LoggerConfigMixin

    def __init__(self, config: LoggerConfigMixin) -> None:
        super().__init__(config)
        if not isinstance(getattr(config, "logging_parameters", None), LoggingParameters):
            raise TypeError(
                f"{type(self).__name__} needs a config with logging_parameters "
                "(derive it from LoggerConfigMixin)"
            )
        _ = self.logger  # every rank builds it here, at the same point (it creates a group)

    # -- set-up ---------------------------------------------------------------------------
    @property
    def logging_parameters(self) -> LoggingParameters:
        return self.config.logging_parameters

    @property
    def experiment_dir(self) -> Path:
        """Where this experiment's runs go: ``runs/<project>/<experiment>``, one per launch."""
        return Path("runs") / self.project / self.experiment

    @property
    def run_dir(self) -> Path:
        """This launch's run directory (written on global rank 0 only; the same on every rank
        once the logger is built)."""
        logger = getattr(self, "_distlog_logger", None)
        if logger is not None and logger.run_dir is not None:
            return logger.run_dir
        planned = getattr(self, "_planned_run_dir", None)
        if planned is not None:
            return planned
        configured = self.logging_parameters.run_dir
        return Path(configured) if configured is not None else self.experiment_dir

    def _plan_run_dir(self) -> tuple[Path, bool | str]:
        """On global rank 0: this launch's run directory, and the Logger's ``resume``."""
        params = self.logging_parameters
        restart = runlog.restart_count()
        if params.run_dir is not None:
            resume: bool | str = True if params.resume_from is not None else "auto"
            path, resuming = runlog.claim_run_dir(params.run_dir, resume=resume, restart=restart)
            if path != runlog.run_dir_path(params.run_dir):
                warnings.warn(
                    f"distlog: {params.run_dir} holds a run from an earlier launch; this launch "
                    f"is a new run in {path} (logging_parameters.resume_from continues the old "
                    "one)",
                    stacklevel=4,
                )
            return path, True if resuming else resume
        parent = self.experiment_dir
        if (parent / runlog.RUN_FILE).is_file() or (parent / runlog.METRICS_FILE).is_file():
            warnings.warn(
                f"distlog: {parent} holds a run in the old layout (one directory per "
                "experiment); new launches get their own run directories inside it",
                stacklevel=4,
            )
        path = runlog.choose_version(parent, restart=restart, resume_from=params.resume_from)
        return path, True if runlog.holds_run(path) else "auto"

    @property
    def logger(self) -> Logger | None:
        """The [Logger][distlog.Logger] (None when logging is disabled). Built on first use."""
        if not hasattr(self, "_distlog_logger"):
            params = self.logging_parameters
            logger: Logger | None = None
            if params.enabled:
                run_dir: Path = self.run_dir
                resume: bool | str = "auto"
                sinks: list[Any] = []
                if self.world.is_global_zero:
                    try:
                        run_dir, resume = self._plan_run_dir()
                    except RunDirError:
                        if params.resume_from is not None and params.run_dir is None:
                            raise  # only rank 0 can look; the launcher stops the others
                    else:  # (another tool's directory: the Logger raises on every rank)
                        self._planned_run_dir = run_dir
                        sinks = self.make_sinks()
                try:
                    logger = Logger(
                        run_dir=run_dir,
                        sinks=sinks,
                        world=self.world,
                        console=params.console,
                        async_write=params.async_write,
                        timeout=params.timeout,
                        nonfinite=params.nonfinite,
                        sink_timeout=params.sink_timeout,
                        resume=resume,
                    )
                except BaseException:
                    for sink in sinks:  # don't leave a tracker run open
                        sink.close(exit_code=1)
                    raise
            self._distlog_logger: Logger | None = logger
        return self._distlog_logger

    def make_sinks(self) -> list[Any]:
        """Extra sinks besides the local run log; called on global rank 0 only."""
        return []

    # -- scalars and config ---------------------------------------------------------------
    def log_config(self, config: dict[str, Any] | Any) -> dict[str, Any] | None:
        """Record a dataclass or nested dict as the run's configuration (every sink)."""
        logger = self.logger
        return logger.log_config(config) if logger is not None else None

    def log_dict(self, logs: dict[str, Any], reduce: str = "mean", **kwargs: Any) -> None:
        """Log several scalars with one reduction (``mean``, ``sum``, ``min``, ``max``, ``last``).

        ``weight=`` and ``spread=`` are passed on to [Logger.log_dict][distlog.logger.Logger.log_dict].
        """
        logger = self.logger
        if logger is not None:
            logger.log_dict(logs, reduce, **kwargs)

    def log_scalar(self, name: str, value: Any, reduce: str = "mean", **kwargs: Any) -> None:
        """Log one scalar (a number or a one-element tensor, on any device)."""
        logger = self.logger
        if logger is not None:
            logger.log_scalar(name, value, reduce, **kwargs)

    def flush_logs(
        self, step: int | None = None, *, block: bool = False
    ) -> dict[str, float] | None:
        """Reduce and write what was logged, at ``step`` (default: ``global_step``).

        Collective: every rank calls it. The harness calls it every ``log_every_n_steps``.
        With ``block=True`` it waits for the row and returns it on rank 0 (see
        [Logger.flush][distlog.logger.Logger.flush]).
        """
        logger = self.logger
        if logger is None:
            return None
        return logger.flush(step=self.global_step if step is None else step, block=block)

    # -- media (converted and gathered by distlog.Logger; rank 0's media by default) ------
    def log_images(
        self,
        images: Any,
        caption: list[str] | str | None = None,
        desc: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Images: a (B, C, H, W) or (C, H, W) tensor or a list of (C, H, W).

        uint8 as is; floats in [0, 1] or [-1, 1] scaled to uint8 (or ``value_range=``).
        ``ranks=`` picks whose images are written (default rank 0).
        """
        logger = self.logger
        if logger is not None:
            logger.log_images(images, caption=caption, desc=desc or "images", **kwargs)

    def log_videos(
        self,
        videos: Any,
        caption: list[str] | str | None = None,
        desc: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Videos: a (B, C, T, H, W) tensor; ``fps=`` and ``format=`` ("gif" or "mp4")."""
        logger = self.logger
        if logger is not None:
            logger.log_videos(videos, caption=caption, desc=desc or "videos", **kwargs)

    def log_plot(self, plot: Any, desc: str | None = None, **kwargs: Any) -> None:
        """A matplotlib figure, rendered to an image (and closed afterwards)."""
        logger = self.logger
        if logger is not None:
            logger.log_plot(plot, desc=desc or "plot", **kwargs)

    def log_histogram(self, values: Any, desc: str, bins: int = 64, **kwargs: Any) -> None:
        """Histogram of a tensor; rank 0's values by default, ``ranks="all"`` for all ranks."""
        logger = self.logger
        if logger is not None:
            logger.log_histogram(values, desc=desc, bins=bins, **kwargs)

    def log_table(
        self, columns: list[str], data: list[list[Any]], desc: str, **kwargs: Any
    ) -> None:
        """Rows of cells (numbers, strings, image tensors) under ``columns``."""
        logger = self.logger
        if logger is not None:
            logger.log_table(columns, data, desc=desc, **kwargs)

    def log_artifact(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        type: str = "artifact",  # noqa: A002 - the trackers' name for it
    ) -> None:
        """Keep a file or directory (e.g. a checkpoint) with the run, from global rank 0: the
        run directory's ``artifacts/``, wandb and MLflow. A no-op on other ranks. See
        [Logger.log_artifact][distlog.logger.Logger.log_artifact]."""
        logger = self.logger
        if logger is not None:
            logger.log_artifact(path, name=name, type=type)

    # -- tracker extras: offered by sinks that have them (wandb), a no-op elsewhere -------
    def log_model(
        self,
        models: list[Any] | None = None,
        log: str | None = "gradients",
        log_freq: int = 1000,
    ) -> None:
        """Track gradients and/or parameters of ``models`` (default ``[self.model]``).

        Done by trackers that can (wandb's ``watch``), on global rank 0 only; DDP wrappers are
        fine. Without such a tracker this does nothing.
        """
        if models is None:
            model = getattr(self, "model", None)
            if model is None:
                raise ValueError("log_model(models=None) needs self.model, or pass models=[...]")
            models = [model]
        if log not in ("gradients", "parameters", "all", None):
            raise ValueError(
                f"log_model(log={log!r}): choose 'gradients', 'parameters', 'all' or None"
            )
        if isinstance(log_freq, bool) or not isinstance(log_freq, int) or log_freq < 1:
            raise ValueError(f"log_model(log_freq={log_freq!r}) must be a positive int")
        for sink in self._sinks_with("watch"):
            sink.watch(models, log=log, log_freq=log_freq)

    def log_code(self, directory: str | os.PathLike[str] = "./", **kwargs: Any) -> None:
        """Save the source files under ``directory`` with trackers that keep code (wandb)."""
        for sink in self._sinks_with("log_code"):
            sink.log_code(directory, **kwargs)

    def _sinks_with(self, method: str) -> list[Any]:
        logger = self.logger
        if logger is None:
            return []
        if logger.closed:
            raise LoggerClosedError(
                "this trainer's logger is finished; log_model/log_code need an open one"
            )
        return [s for s in logger.sinks if callable(getattr(s, method, None))]

    def finish(self, exit_code: int = 0) -> None:
        """Flush what is left and close every sink. Idempotent.

        With a non-zero ``exit_code`` (a crash) no collective is attempted.
        """
        logger = self.logger
        if logger is not None:
            logger.finish(exit_code=exit_code, step=self.global_step if exit_code == 0 else None)


class WandBLoggerMixin(LoggerMixin):
    """[LoggerMixin][distlog.mixins.LoggerMixin] that also writes to Weights & Biases from global rank 0.

    Only global rank 0 calls ``wandb.init``: a multi-rank job makes exactly one run. If wandb
    is missing, every rank raises ImportError at construction (naming ``distlog[wandb]``). If
    ``wandb.init`` fails or exceeds ``init_timeout``, rank 0 warns and the job goes on with the
    local run log only; the other ranks wait at most ``init_timeout`` at their first flush.

    The wandb run's id is the run's own id (``<run_dir>/run.json``, ``logger.run_id``) unless
    ``logging_parameters.id`` or ``WANDB_RUN_ID`` names another, which ``run.json`` then records
    as ``wandb_id``: every start of the run directory, a torchrun restart included, continues
    the same wandb run.
    """

    config: WandBLoggerConfigMixin

    def __init__(self, config: WandBLoggerConfigMixin) -> None:
        _one_tracker(self)
        params = getattr(config, "logging_parameters", None)
        if params is not None and getattr(params, "enabled", False):
            # on every rank, before any collective: what rank 0 alone would trip over later
            if not isinstance(params, WandbLoggingParameters):
                raise LogTypeError(
                    f"{type(self).__name__} (WandBLoggerMixin) needs "
                    "logging_parameters=WandbLoggingParameters(...), got "
                    f"{type(params).__name__} (derive the config from WandBLoggerConfigMixin)"
                )
            from distlog.sinks.wandb import import_wandb

            _check_wandb_settings(import_wandb(), params.settings)
        self.wandb_sink: Any = None
        super().__init__(config)

    @property
    def wandb_run(self) -> Any:
        """The ``wandb`` Run on global rank 0 (None elsewhere, or when init failed)."""
        return self.wandb_sink.run if self.wandb_sink is not None else None

    def make_sinks(self) -> list[Any]:
        from distlog.sinks.wandb import WandbInitError, WandbSink

        params = self.logging_parameters
        if not isinstance(params, WandbLoggingParameters):  # checked on every rank in __init__
            raise LogTypeError(
                "WandBLoggerMixin needs logging_parameters=WandbLoggingParameters(...) "
                "(derive the config from WandBLoggerConfigMixin)"
            )
        run_id = _wandb_run_id(self.run_dir, params.id or os.environ.get("WANDB_RUN_ID"))
        try:
            sink = WandbSink(
                project=params.project or self.project,
                entity=params.entity,
                group=params.group or self.group,
                name=params.name or self.experiment,
                id=run_id,
                tags=params.tags,
                mode=params.mode,
                dir=params.dir,
                resume=params.resume,
                init_timeout=params.init_timeout,
                step_metric=params.step_metric,
                settings=params.settings or None,
            )
        except WandbInitError as exc:
            warnings.warn(
                f"distlog: {exc}. Logging goes on to the local run log {self.run_dir} only.",
                stacklevel=2,
            )
            return [*super().make_sinks()]
        self.wandb_sink = sink
        _record_wandb_run_id(self.run_dir, sink.run_id)
        return [*super().make_sinks(), sink]


class MLflowLoggerMixin(LoggerMixin):
    """[LoggerMixin][distlog.mixins.LoggerMixin] that also writes to MLflow from global rank 0.

    One MLflow run per distlog run: its id is kept in ``<run_dir>/run.json`` as
    ``mlflow_id``, so a restart of the job (and ``resume_from``) continues the same MLflow run,
    and a new launch makes a new one. If mlflow is missing, every rank raises ImportError at
    construction (naming ``distlog[mlflow]``); if the store cannot be reached, rank 0 warns
    once and the job goes on with the local run log.
    """

    config: MLflowLoggerConfigMixin

    def __init__(self, config: MLflowLoggerConfigMixin) -> None:
        _one_tracker(self)
        params = getattr(config, "logging_parameters", None)
        if params is not None and getattr(params, "enabled", False):
            if not isinstance(params, MlflowLoggingParameters):  # on every rank
                raise LogTypeError(
                    f"{type(self).__name__} (MLflowLoggerMixin) needs "
                    "logging_parameters=MlflowLoggingParameters(...), got "
                    f"{type(params).__name__} (derive the config from MLflowLoggerConfigMixin)"
                )
            from distlog.sinks.mlflow import import_mlflow

            import_mlflow()  # on every rank, before any collective
        self.mlflow_sink: Any = None
        super().__init__(config)

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run's id on global rank 0 (None elsewhere, or when the store failed)."""
        return self.mlflow_sink.run_id if self.mlflow_sink is not None else None

    def make_sinks(self) -> list[Any]:
        from distlog.sinks.mlflow import MlflowInitError, MlflowSink

        params = self.logging_parameters
        if not isinstance(params, MlflowLoggingParameters):  # checked on every rank in __init__
            raise LogTypeError(
                "MLflowLoggerMixin needs logging_parameters=MlflowLoggingParameters(...) "
                "(derive the config from MLflowLoggerConfigMixin)"
            )
        info = runlog.ensure_run_info(self.run_dir)
        recorded = info.get(_MLFLOW_ID_KEY)
        try:
            sink = MlflowSink(
                tracking_uri=params.tracking_uri,
                experiment=params.experiment or self.project,
                run_name=params.run_name or self.experiment,
                run_id=recorded if isinstance(recorded, str) and recorded else None,
                tags={"distlog.run_id": str(info["id"]), **params.tags},
                init_timeout=params.init_timeout,
            )
        except MlflowInitError as exc:
            warnings.warn(
                f"distlog: {exc}. Logging goes on to the local run log {self.run_dir} only.",
                stacklevel=2,
            )
            return [*super().make_sinks()]
        self.mlflow_sink = sink
        runlog.ensure_run_info(self.run_dir, **{_MLFLOW_ID_KEY: sink.run_id})
        return [*super().make_sinks(), sink]


_MLFLOW_ID_KEY = "mlflow_id"
"""Where ``run.json`` keeps the MLflow run of a distlog run."""


def _one_tracker(trainer: Any) -> None:
    """Refuse WandBLoggerMixin and MLflowLoggerMixin in one trainer, on every rank alike."""
    if isinstance(trainer, WandBLoggerMixin) and isinstance(trainer, MLflowLoggerMixin):
        raise LogTypeError(
            f"{type(trainer).__name__} mixes in both WandBLoggerMixin and MLflowLoggerMixin, "
            "which is not supported: a trainer has one logging_parameters, and the two "
            "trackers' settings differ (tags is a list for wandb, a dict for MLflow). Use one "
            "tracker mixin (TensorBoardLoggerMixin combines with either), and add the other "
            "tracker's sink in make_sinks(): return [*super().make_sinks(), MlflowSink(...)]"
        )


def _check_wandb_settings(wandb: Any, settings: Mapping[str, Any]) -> None:
    """``logging_parameters.settings`` as ``wandb.Settings`` takes them, or a LogValueError
    naming what it rejected (checked on every rank, before any collective)."""
    if not settings:
        return
    from distlog.sinks.wandb import settings_problem

    try:
        wandb.Settings(**settings)
    except Exception as exc:  # pydantic's ValidationError
        raise LogValueError(
            f"logging_parameters.settings: wandb.Settings rejected {settings_problem(exc)}"
        ) from exc


# The wandb run of a run directory is the run's own id (``run.json``'s ``id``, the Logger's
# ``run_id``) unless another one was asked for: an explicit id, or one from an older distlog
# that kept it in a file of its own. That other id is kept in ``run.json`` as ``wandb_id``, so
# there is one file to read on a restart. All of this runs on global rank 0 only (make_sinks),
# before the Logger records its start in the same file; no other rank reads it or waits for it.
_WANDB_ID_KEY = "wandb_id"
_LEGACY_RUN_ID_FILE = "wandb-run.json"
"""Where earlier versions kept the wandb id: read on a restart, never written any more."""


def _wandb_run_id(run_dir: Path, explicit: str | None) -> str:
    """The id to pass to ``wandb.init`` for this start of the run in ``run_dir``.

    In order: ``explicit``; the ``wandb_id`` recorded in ``run.json``; on a restart
    (``TORCHELASTIC_RESTART_COUNT`` or ``SLURM_RESTART_COUNT`` > 0), the id in a legacy
    ``wandb-run.json``; the run's own id, created in ``run.json`` now if the run has none yet.
    """
    if explicit:
        return explicit
    info = runlog.ensure_run_info(run_dir)
    recorded = info.get(_WANDB_ID_KEY)
    if isinstance(recorded, str) and recorded:
        return recorded
    if runlog.restart_count() > 0:
        legacy = _legacy_run_id(run_dir)
        if legacy is not None:
            return legacy
    return str(info["id"])


def _legacy_run_id(run_dir: Path) -> str | None:
    """The id in ``<run_dir>/wandb-run.json``, left by an older distlog (None if none)."""
    try:
        value = json.loads((run_dir / _LEGACY_RUN_ID_FILE).read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def _record_wandb_run_id(run_dir: Path, wandb_id: str) -> None:
    """Keep ``wandb_id`` in ``run.json`` when it is not the run's own id (else drop the key)."""
    try:
        own = runlog.ensure_run_info(run_dir)["id"]
        runlog.ensure_run_info(run_dir, **{_WANDB_ID_KEY: wandb_id if wandb_id != own else None})
    except OSError as exc:
        warnings.warn(
            f"distlog: could not record the wandb run id in {run_dir / runlog.RUN_FILE}: {exc}",
            stacklevel=3,
        )


# Beside WandBLoggerMixin, where users look for it. Imported last: it subclasses LoggerMixin.
from distlog.tensorboard_mixin import TensorBoardLoggerMixin  # noqa: E402
