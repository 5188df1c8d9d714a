"""The output layer: event records, renderers, sinks, the writer thread and aggregations.

Pure: it imports only the standard library and knows nothing of the engine.
"""

from __future__ import annotations

from pyprobes.output.aggregate import (
    Aggregator,
    AggregatorConfig,
    ContainerKey,
    CountBy,
    EventAggregates,
    canonical_key,
    field_value,
)
from pyprobes.output.histogram import LinearHistogram, Log2Histogram
from pyprobes.output.records import ENTRY, RETURN, Event
from pyprobes.output.render import RENDERERS, Renderer, get_renderer
from pyprobes.output.render_chrome import ChromeRenderer
from pyprobes.output.render_json import JsonRenderer
from pyprobes.output.render_text import TextRenderer, format_value
from pyprobes.output.sinks import FileSink, Sink, SinkHandle, StreamSink
from pyprobes.output.stats import Stats
from pyprobes.output.summary import SummaryRow, format_summary, interval_stamp
from pyprobes.output.units import format_duration
from pyprobes.output.writer import WRITER_THREAD_NAME, EventWriter

__all__ = [
    "ENTRY",
    "RENDERERS",
    "RETURN",
    "WRITER_THREAD_NAME",
    "Aggregator",
    "AggregatorConfig",
    "ChromeRenderer",
    "ContainerKey",
    "CountBy",
    "Event",
    "EventAggregates",
    "EventWriter",
    "FileSink",
    "JsonRenderer",
    "LinearHistogram",
    "Log2Histogram",
    "Renderer",
    "Sink",
    "SinkHandle",
    "Stats",
    "StreamSink",
    "SummaryRow",
    "TextRenderer",
    "canonical_key",
    "field_value",
    "format_duration",
    "format_summary",
    "format_value",
    "get_renderer",
    "interval_stamp",
]
