"""Durations in human units, and the time units histograms are shown in."""

from __future__ import annotations

import math

# (label, nanoseconds per unit), smallest first, as bcc's tools name them.
TIME_UNITS: tuple[tuple[str, int], ...] = (
    ("nsecs", 1),
    ("usecs", 1_000),
    ("msecs", 1_000_000),
)


def format_duration(ns: float) -> str:
    """A duration in ns as a person reads it: ``850ns``, ``12.3us``, ``1.2ms``, ``2.50s``.

    The unit is picked after rounding, so 999_960 ns reads ``1.0ms``, not ``1000.0us``.
    """
    if not math.isfinite(ns):
        return f"{ns}ns"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if round(ns) < 1_000:
        return f"{sign}{round(ns)}ns"
    if round(ns / 1e3, 1) < 1_000:
        return f"{sign}{ns / 1e3:.1f}us"
    if round(ns / 1e6, 1) < 1_000:
        return f"{sign}{ns / 1e6:.1f}ms"
    return f"{sign}{ns / 1e9:.2f}s"
