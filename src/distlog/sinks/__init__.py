"""Backends behind one protocol. Each lives in its own module and imports its backend lazily."""

from distlog.sinks.base import Sink
from distlog.sinks.console import ConsoleSink
from distlog.sinks.jsonl import JsonlSink

__all__ = ["ConsoleSink", "JsonlSink", "Sink"]
