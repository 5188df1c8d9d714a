"""The tracer: probe specs compiled onto the engine, feeding event output and aggregations.

It sits above ``lang`` and ``output`` (which know nothing of each other) and below ``attach``
and ``cli``, which both run tracing sessions.
"""

from __future__ import annotations

from pyprobes.tracer.hits import HitRecorder
from pyprobes.tracer.session import TraceSession
from pyprobes.tracer.targets import Placement

__all__ = ["HitRecorder", "Placement", "TraceSession"]
