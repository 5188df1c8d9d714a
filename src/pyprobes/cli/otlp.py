"""``--otlp ENDPOINT``: return-probe activations as spans and the aggregations as metrics, sent
to an OpenTelemetry collector over OTLP/HTTP while the program runs (``output.otlp`` does it;
this module ties it to ``run``'s options). Needs the optional extra ``otlp``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyprobes
from pyprobes.cli.options import UsageError, aggregations_asked
from pyprobes.lang import ProbeSpec
from pyprobes.output import Event
from pyprobes.output.sanitize import terminal_safe

if TYPE_CHECKING:
    from pyprobes.output.otlp import OtlpExport

INSTALL_HINT = (
    "--otlp needs the OpenTelemetry SDK and its OTLP/HTTP exporter, which are not installed:"
    " pip install 'pyprobes[otlp]' (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http)"
)

#: How a probe's hits run under --otlp when a program records them (``pyprobes check``).
OTLP_RECORDS_PATH = "program, spans from records in the core"


def add_otlp_options(parser: argparse.ArgumentParser) -> None:
    """--otlp."""
    parser.add_argument(
        "--otlp",
        metavar="ENDPOINT",
        help="send return-probe activations as spans and the aggregations as metrics to an"
        " OpenTelemetry collector over OTLP/HTTP (e.g. http://127.0.0.1:4318); needs"
        " pip install 'pyprobes[otlp]'",
    )


def check_otlp_options(args: argparse.Namespace, specs: list[ProbeSpec]) -> None:
    """Refuse what --otlp cannot send, before the program starts."""
    if getattr(args, "otlp", None) is None:
        return
    aggregations = aggregations_asked(args)
    if not any(s.is_return for s in specs) and not aggregations:
        raise UsageError(
            "--otlp sends return probes' activations as spans and aggregations as metrics:"
            " give an r probe (e.g. -e 'r mod:func') or --count/--hist"
        )
    if args.interval and aggregations:
        raise UsageError(
            "--otlp sends cumulative metrics, and --interval resets the aggregations:"
            " use one of them"
        )
    try:
        from pyprobes.output.otlp import endpoint_urls
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    try:
        endpoint_urls(args.otlp)
    except ValueError as exc:
        raise UsageError(f"--otlp {terminal_safe(args.otlp, 256)}: {exc}") from None


def open_otlp(args: argparse.Namespace, program: str, pid: int | None = None) -> OtlpExport | None:
    """The export for --otlp (its threads started), or None without it; a missing SDK or a
    bad endpoint is a UsageError. ``pid``: the probed process (``attach``), else this one."""
    if getattr(args, "otlp", None) is None:
        return None
    try:
        from pyprobes.output.otlp import OtlpExport, make_resource
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    try:
        resource = make_resource(program, os.getpid() if pid is None else pid)
        return OtlpExport(
            args.otlp, resource, thread_context=pyprobes.own_thread, version=pyprobes.__version__
        )
    except ValueError as exc:
        raise UsageError(f"--otlp {terminal_safe(args.otlp, 256)}: {exc}") from None


def spans_emit(otlp: OtlpExport, emit: Callable[[Event], None] | None) -> Callable[[Event], None]:
    """The session's event sink: return events to the span thread, and every event to
    ``emit`` too when events are written."""
    to_spans = otlp.emit

    if emit is None:

        def only_spans(event: Event) -> None:
            if event.activation is not None:
                to_spans(event)

        return only_spans

    def both(event: Event) -> None:
        emit(event)
        if event.activation is not None:
            to_spans(event)

    return both


def finish_otlp(otlp: OtlpExport) -> Callable[[], None]:
    """What the end of the run does: send what is left, then say what was sent and lost."""

    def finish() -> None:
        with pyprobes.own_thread():
            otlp.finish()
        for line in otlp.report():
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except Exception:
                pass

    return finish
