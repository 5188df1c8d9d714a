"""The output tests' shared factories: one for events, and histograms of values (imported as
``output_helpers``)."""

from __future__ import annotations

from pyprobes.output import Event, LinearHistogram, Log2Histogram


def make_event(kind: str = "p", args: dict[str, object] | None = None, **fields: object) -> Event:
    """An Event of ``kind`` with ``args`` (none by default) and neutral values elsewhere;
    a keyword gives any other field (``event=``, ``time_ns=``, ``retval=``, ...)."""
    values: dict[str, object] = dict(
        event="e",
        group="g",
        kind=kind,
        probe="m:f",
        location="m.py:1",
        time_ns=0,
        pid=1,
        thread_id=1,
        thread_name="T",
        args={} if args is None else args,
    )
    values.update(fields)
    return Event(**values)  # type: ignore[arg-type]


def hist_of(values: list[int], unit: str = "nsecs") -> Log2Histogram:
    """A log2 histogram of ``values``."""
    h = Log2Histogram(unit)
    for v in values:
        h.add(v)
    return h


def lhist_of(values: list[int], lo: int = 0, hi: int = 100, step: int = 10) -> LinearHistogram:
    """A linear histogram of ``values``."""
    h = LinearHistogram(lo, hi, step)
    for v in values:
        h.add(v)
    return h
