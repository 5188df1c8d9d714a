"""Text output, one line per event in the manner of ftrace's ``trace_pipe``."""

from __future__ import annotations

from collections.abc import Mapping

from pyprobes.output.records import RETURN, Event
from pyprobes.output.sanitize import READABLE, dumps, int_text, safe_repr, terminal_safe
from pyprobes.output.units import format_duration

DURATION_ARG = "$duration"


def format_value(value: object) -> str:
    """One captured value, compactly: strings repr-quoted, containers as JSON, scalars as Python."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int):
        return int_text(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, list | tuple | Mapping):
        return dumps(value, separators=READABLE)
    return safe_repr(value)


def format_arg(name: str, value: object) -> str:
    """``value`` as shown after ``name=``; ``$duration`` (ns) in human units."""
    if name == DURATION_ARG and isinstance(value, int | float) and not isinstance(value, bool):
        return format_duration(value)
    return format_value(value)


def _exception_type(text: str | None) -> str:
    """The type name at the head of an exception's rendering (``ValueError('x')``)."""
    head = (text or "?").split("(", 1)[0].split(":", 1)[0].strip()
    return head or "?"


class TextRenderer:
    """Renders ``{thread}-{pid} [{tid}] {secs}: {event}: ({probe}) name=value ...`` lines."""

    def header(self) -> str:
        """Nothing: a trace_pipe has no header."""
        return ""

    def footer(self) -> str:
        """Nothing: a trace_pipe has no footer."""
        return ""

    def render(self, event: Event) -> str:
        """One line, newline-terminated; a return shows ``(return site <- probe)``, both in
        probe syntax, and one that raised says ``raised=TYPE`` instead of a ``$retval``."""
        returned = event.kind == RETURN
        where = f"{event.site or event.location} <- {event.probe}" if returned else event.probe
        line = (
            f"{event.thread_name}-{event.pid} [{event.thread_id}] "
            f"{event.time_ns / 1e9:.6f}: {event.event}: ({where})"
        )
        raised = returned and event.exception is not None
        args = event.args
        if raised and "$retval" in args:
            args = {k: v for k, v in args.items() if k != "$retval"}
        if args:
            line += " " + " ".join(f"{k}={format_arg(k, v)}" for k, v in args.items())
        if raised and "$exception" not in args:
            line += f" raised={_exception_type(event.exception)}"
        # Thread names, locations and probe names come from the program, untrusted: escape
        # what a terminal would act on (values are repr/JSON-escaped already), so one event
        # stays one line and UTF-8 can encode it.
        return terminal_safe(line, None) + "\n"
