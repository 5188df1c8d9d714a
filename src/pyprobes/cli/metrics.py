"""``--metrics-port``/``--metrics-addr``: the session's aggregations at ``/metrics`` while the
program runs (``run``) or while attached (``attach``), in Prometheus' text format;
``output.prometheus`` renders, ``output.metrics_server`` serves, this module ties them to what
the command reads."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable

import pyprobes
from pyprobes.cli.options import UsageError
from pyprobes.output import Aggregator, EventWriter, SummaryRow
from pyprobes.output.metrics_server import MetricsServer
from pyprobes.output.prometheus import KeyBudget, render_metrics
from pyprobes.output.sanitize import terminal_safe
from pyprobes.tracer import TraceSession
from pyprobes.tracer.programs import MAX_KEYS

DEFAULT_ADDR = "127.0.0.1"


def add_metrics_options(parser: argparse.ArgumentParser) -> None:
    """--metrics-port and --metrics-addr."""
    parser.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve the aggregations and counters at http://ADDR:PORT/metrics (Prometheus"
        " text format) while the program runs; 0 picks a free port",
    )
    parser.add_argument(
        "--metrics-addr",
        metavar="ADDR",
        help="the address --metrics-port binds (default 127.0.0.1; 0.0.0.0 or :: for all)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def check_metrics_options(args: argparse.Namespace) -> None:
    """Refuse what /metrics cannot serve, before the program starts."""
    if args.metrics_port is None:
        if args.metrics_addr is not None:
            raise UsageError("--metrics-addr is where --metrics-port binds: give that too")
        return
    if not args.probe and not args.probe_file:
        raise UsageError("--metrics-port serves the probes' figures: give probes with -e or -f")
    if args.interval:
        raise UsageError(
            "--metrics-port serves cumulative counters, and --interval resets the aggregations:"
            " use one of them (Prometheus' rate() gives per-interval figures)"
        )


#: What a scrape reads: the aggregations (a snapshot, never reset) and the summary's rows.
Reader = Callable[[], tuple[Aggregator | None, list[SummaryRow]]]


def session_reader(
    session: TraceSession, aggregator: Aggregator | None, writer: EventWriter
) -> Reader:
    """``pyprobes run``'s figures at this moment: the programs' results folded in first."""

    def read() -> tuple[Aggregator | None, list[SummaryRow]]:
        session.collect()
        snapshot = aggregator.snapshot() if aggregator is not None else None
        return snapshot, session.summary_rows(writer.lost_by_event())

    return read


def metrics_page(read: Reader, pid: int) -> Callable[[], str]:
    """What a scrape answers, labelled with this host and ``pid`` (the probed process)."""
    labels = {"hostname": socket.gethostname(), "pid": str(pid)}
    info = {"version": pyprobes.__version__, "core": pyprobes.core_name()}
    budget = KeyBudget(MAX_KEYS)

    def page() -> str:
        snapshot, rows = read()
        return render_metrics(snapshot, rows, labels=labels, budget=budget, info=info)

    return page


def start_metrics(
    args: argparse.Namespace, read: Reader, pid: int | None = None
) -> MetricsServer | None:
    """Bind and start serving when --metrics-port was given (one line on stderr says where);
    a bind failure is a UsageError. ``pid``: the probed process (default this one)."""
    if args.metrics_port is None:
        return None
    page = metrics_page(read, os.getpid() if pid is None else pid)
    addr = args.metrics_addr or DEFAULT_ADDR
    try:
        server = MetricsServer(page, addr, args.metrics_port, thread_context=pyprobes.own_thread)
    except (OSError, OverflowError, UnicodeError) as exc:
        where = terminal_safe(f"{addr}:{args.metrics_port}", 256)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot serve metrics on {where}: {reason}") from None
    server.start()
    try:
        sys.stderr.write(f"pyprobes: metrics at {server.url}\n")
        sys.stderr.flush()
    except Exception:
        pass
    return server
