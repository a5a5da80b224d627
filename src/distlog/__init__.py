"""distlog: distributed-aware metrics logging for PyTorch."""

from distlog.aggregation import REDUCTIONS
from distlog.errors import (
    DistlogError,
    KeyConflictError,
    LoggerClosedError,
    LogTypeError,
    LogValueError,
    RankDivergenceError,
)
from distlog.logger import Logger, to_config_dict
from distlog.runlog import read_metrics
from distlog.sinks import ConsoleSink, JsonlSink, Sink
from distlog.world import World, init_distributed

__version__ = "0.1.0"

__all__ = [
    "ConsoleSink",
    "DistlogError",
    "JsonlSink",
    "KeyConflictError",
    "REDUCTIONS",
    "LogTypeError",
    "LogValueError",
    "Logger",
    "LoggerClosedError",
    "RankDivergenceError",
    "Sink",
    "World",
    "__version__",
    "init_distributed",
    "read_metrics",
    "to_config_dict",
]
