"""Backends behind one protocol. Each lives in its own module and imports its backend lazily."""

from distlog.sinks.base import Sink
from distlog.sinks.console import ConsoleSink
from distlog.sinks.jsonl import JsonlSink
from distlog.sinks.progress import ProgressSink
from distlog.sinks.tensorboard import TensorBoardSink

__all__ = ["ConsoleSink", "JsonlSink", "ProgressSink", "Sink", "TensorBoardSink"]
