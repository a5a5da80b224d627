"""distlog: distributed-aware metrics logging for PyTorch.

Every rank buffers scalars cheaply; at each flush the buffers of all ranks are reduced together
in a constant number of fused collectives, and only global rank 0 writes the aggregated values to
its sinks (a local run directory by default, Weights & Biases, TensorBoard, the console).
"""

from distlog.config import to_config_dict
from distlog.errors import (
    DistlogError,
    KeyConflictError,
    LoggerClosedError,
    LogTypeError,
    LogUsageError,
    LogValueError,
    RankDivergenceError,
    RunDirError,
)
from distlog.exchange import ExchangeOptions
from distlog.layout import REDUCTIONS
from distlog.logger import Logger
from distlog.media import Histogram, Images, MediaWarning, Table, Video, Videos
from distlog.metrics import metric_values
from distlog.mixins import (
    LoggerConfigMixin,
    LoggerMixin,
    LoggingParameters,
    MLflowLoggerConfigMixin,
    MLflowLoggerMixin,
    MlflowLoggingParameters,
    TensorBoardLoggerMixin,
    WandBLoggerConfigMixin,
    WandBLoggerMixin,
    WandbLoggingParameters,
)
from distlog.runlog import last_step, read_metrics, read_run_info
from distlog.sinks import ConsoleSink, JsonlSink, ProgressSink, Sink, TensorBoardSink
from distlog.sinks.mlflow import MlflowInitError, MlflowSink
from distlog.sinks.wandb import WandbInitError, WandbSink
from distlog.system import SystemMetrics, mfu
from distlog.trainer import BaseTrainer, BaseTrainerConfig, Callback
from distlog.world import World, init_distributed

__version__ = "0.1.0"

__all__ = [
    "REDUCTIONS",
    "BaseTrainer",
    "BaseTrainerConfig",
    "Callback",
    "ConsoleSink",
    "DistlogError",
    "ExchangeOptions",
    "Histogram",
    "Images",
    "JsonlSink",
    "KeyConflictError",
    "LogTypeError",
    "LogUsageError",
    "LogValueError",
    "Logger",
    "LoggerClosedError",
    "LoggerConfigMixin",
    "LoggerMixin",
    "LoggingParameters",
    "MediaWarning",
    "MLflowLoggerConfigMixin",
    "MLflowLoggerMixin",
    "MlflowInitError",
    "MlflowLoggingParameters",
    "MlflowSink",
    "ProgressSink",
    "RankDivergenceError",
    "RunDirError",
    "Sink",
    "SystemMetrics",
    "Table",
    "TensorBoardLoggerMixin",
    "TensorBoardSink",
    "Video",
    "Videos",
    "WandBLoggerConfigMixin",
    "WandBLoggerMixin",
    "WandbInitError",
    "WandbLoggingParameters",
    "WandbSink",
    "World",
    "__version__",
    "init_distributed",
    "metric_values",
    "mfu",
    "last_step",
    "read_metrics",
    "read_run_info",
    "to_config_dict",
]
