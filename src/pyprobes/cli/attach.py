"""``pyprobes attach PID``: probe a running process, stream its events, leave it as it was.

The probes are added through the process's agent and belong to this connection: they are
removed when it ends, by Ctrl-C, ``--duration``, or this command dying. Events are streamed
and aggregated here (the target only queues them), printed as ``pyprobes run`` prints them:
events to stderr or ``-o``, aggregations and the summary to stderr at the end. With
``--otlp`` the target streams its events with their activation links (``add.spans``) and the
spans and OTLP metrics are built and exported here, as ``pyprobes run --otlp`` does in-process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyprobes.attach.client import AgentConnection, Message, event_from_json
from pyprobes.attach.errors import AgentGoneError, AttachError, RemoteError
from pyprobes.attach.protocol import BAD_MESSAGE
from pyprobes.cli.metrics import add_metrics_options, check_metrics_options, start_metrics
from pyprobes.cli.options import (
    UsageError,
    add_tracing_options,
    check_fields,
    load_specs,
    make_aggregator,
    open_output,
    output_failure,
    wants_events,
)
from pyprobes.cli.otlp import add_otlp_options, check_otlp_options, finish_otlp, open_otlp
from pyprobes.lang import ProbeSpec
from pyprobes.output import (
    Aggregator,
    Event,
    EventWriter,
    SummaryRow,
    format_summary,
    interval_stamp,
)
from pyprobes.output.aggregate_data import aggregator_from_data
from pyprobes.output.sanitize import terminal_safe

if TYPE_CHECKING:
    from pyprobes.output.otlp import OtlpExport

DETACH_TIMEOUT = 15.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``attach`` subcommand."""
    p = sub.add_parser(
        "attach",
        help="probe a running process",
        description="Add probes to the running process PID through its pyprobes agent, print"
        " their events until Ctrl-C or --duration, then the aggregations and a summary; the"
        " probes are removed when this command ends, however it ends. The process needs an"
        " agent: PYPROBES_AGENT=1 in its environment, 'pyprobes run --listen', or"
        " pyprobes.agent.start(); when it has none, attach starts one (through gdb on CPython"
        " 3.12/3.13, which must be installed; through sys.remote_exec on 3.14+).",
    )
    p.add_argument("pid", type=int, nargs="?", metavar="PID", help="the process to attach to")
    add_tracing_options(p)
    add_metrics_options(p)
    add_otlp_options(p)
    p.set_defaults(func=attach)


def _err(text: str) -> None:
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def _summary_rows(rows: object) -> list[SummaryRow]:
    """The agent's summary rows (of a ``detached`` or ``counts`` message)."""
    return [
        SummaryRow(
            str(r["event"]),
            int(r["hits"]),
            int(r["misses"]),
            int(r["lost"]),
            int(r["filtered"]) if "filtered" in r else None,  # (an older agent)
        )
        for r in (rows if isinstance(rows, list) else ())
        if isinstance(r, dict)
    ]


class _Stream:
    """Feeds the agent's messages to the writer and the aggregator; keeps the counts."""

    def __init__(
        self,
        conn: AgentConnection,
        writer: EventWriter,
        agg: Aggregator | None,
        events: bool,
        spans: Callable[[Event], None] | None = None,
    ) -> None:
        self.conn = conn
        self.writer = writer
        self.events = events
        self.agg = agg
        self.spans = spans  # --otlp: return events with an activation go to the span thread
        self.received: dict[str, int] = {}
        self.bad = 0
        self.remote_lost: dict[str, int] = {}
        self.summary: list[SummaryRow] | None = None
        self.counts: list[SummaryRow] | None = None  # the agent's last counts message
        self.gone: str | None = None

    def handle(self, msg: Message) -> None:
        kind = msg["type"]
        if kind == "events":
            events = msg.get("events")
            for d in events if isinstance(events, list) else ():
                event = event_from_json(d) if isinstance(d, dict) else None
                if event is None:
                    self.bad += 1
                    continue
                self.received[event.event] = self.received.get(event.event, 0) + 1
                if self.events:
                    self.writer.emit(event)
                if self.agg is not None:
                    self.agg.add(event)
                if self.spans is not None and event.activation is not None:
                    self.spans(event)
        elif kind == "aggregates":
            if self.agg is None:
                self.bad += 1
                return
            try:
                self.agg.absorb(aggregator_from_data(self.agg.config, msg.get("aggregates")))
            except (ValueError, TypeError):
                self.bad += 1
        elif kind == "counts":  # the agent's counters so far (a newer agent sends them)
            try:
                self.counts = _summary_rows(msg.get("summary"))
            except (KeyError, TypeError, ValueError):
                self.bad += 1
        elif kind in ("lost", "detached"):
            lost = msg.get("lost", msg) if kind == "detached" else msg
            by_event = lost.get("by_event") if isinstance(lost, dict) else None
            if isinstance(by_event, dict):
                self.remote_lost = {str(k): int(v) for k, v in by_event.items()}
            if kind == "detached":
                self.summary = _summary_rows(msg.get("summary"))
        elif kind == "bye":
            self.gone = f"process {self.conn.pid}: {msg.get('reason', 'its agent stopped')}"
            raise AgentGoneError(self.gone)

    def pump(
        self,
        until: float | None,
        interval: float | None,
        started: Callable[[], None] | None = None,
    ) -> None:
        """Handle messages until ``until`` (monotonic), Ctrl-C or SIGTERM; print every
        ``interval``. While streaming, the signals only set a flag, checked at least every
        0.2 s: an exception raised inside a socket read would lose a piece of the stream.
        ``started`` runs once they do (from then on Ctrl-C detaches with the summary)."""
        stop: list[int] = []

        def request_stop(signum: int, frame: object) -> None:
            stop.append(signum)

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            if started is not None:
                started()
            self._pump(until, interval, stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _pump(self, until: float | None, interval: float | None, stop: list[int]) -> None:
        next_print = None if interval is None else time.monotonic() + interval
        while not stop:
            now = time.monotonic()
            if until is not None and now >= until:
                return
            if next_print is not None and now >= next_print:
                if self.agg is not None:
                    block = self.agg.snapshot_and_reset().render()
                    _err(f"{interval_stamp(time.time())}\n{block}")
                next_print += interval or 0
            wake = min(t for t in (until, next_print, now + 0.2) if t is not None)
            msg = self.conn.receive(max(0.0, wake - now))
            if msg is not None:
                self.handle(msg)

    def detach(self) -> None:
        """Ask the agent to remove the probes and send what it still holds, then the summary."""
        reply = self.conn.request("detach", timeout=DETACH_TIMEOUT)
        while True:
            msg = self.conn.receive(0)
            if msg is None:
                break
            self.handle(msg)
        self.handle(reply)

    def rows(self) -> list[SummaryRow]:
        local = self.writer.lost_by_event()
        if self.summary is not None:
            rows = self.summary
        elif self.counts is not None:  # still attached: the agent's counters so far
            rows = self.counts
        else:  # the process went away: what arrived is all we know
            rows = [
                SummaryRow(e, n, 0, self.remote_lost.get(e, 0))
                for e, n in list(self.received.items())  # (a copy: /metrics reads it too)
            ]
        # EVENTS: what this client wrote (the agent's events reach the output here)
        written = self.writer.written_by_event() if self.events else None
        out = []
        seen: set[str] = set()
        for r in rows:
            first = r.event not in seen
            extra = local.get(r.event, 0) if first else 0
            seen.add(r.event)
            events = None if written is None else (written.get(r.event, 0) if first else 0)
            out.append(SummaryRow(r.event, r.hits, r.misses, r.lost + extra, r.filtered, events))
        return out

    def metrics(self) -> tuple[Aggregator | None, list[SummaryRow]]:
        """What /metrics shows (on the server's thread): the aggregations received so far,
        and the agent's counters so far (its counts messages; an older agent's come at detach)."""
        return (self.agg.snapshot() if self.agg is not None else None), self.rows()

    def lost_total(self) -> int:
        return sum(self.remote_lost.values()) + sum(self.writer.lost_by_event().values()) + self.bad


def attach(args: argparse.Namespace) -> int:
    """Attach, stream until Ctrl-C or --duration, detach; print aggregations and the summary."""
    if args.pid is None:  # `--hist PID`: the PID was taken for --hist's optional FIELD
        if args.hist is None or not args.hist.isdigit():
            raise UsageError("give the PID of the process to attach to")
        args.pid, args.hist = int(args.hist), "$duration"
    specs = check_fields(args, load_specs(args))
    check_metrics_options(args)
    check_otlp_options(args, specs)
    previous = signal.signal(signal.SIGTERM, _terminate)  # SIGTERM ends it as Ctrl-C does
    try:
        return _attach(args, specs)
    except KeyboardInterrupt:  # before streaming began: the connection's end removes the probes
        _err("pyprobes: interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _add_spans(conn: AgentConnection, texts: list[str]) -> Message:
    """``add`` with ``spans``; an agent that predates it refuses the field: say what to do."""
    try:
        return conn.request("add", specs=texts, spans=True)
    except RemoteError as exc:
        if exc.code == BAD_MESSAGE and "no field 'spans'" in str(exc):
            version = terminal_safe(str(conn.welcome.get("pyprobes", "?")), 40)
            raise AttachError(
                f"process {conn.pid}: its agent (pyprobes {version}) cannot send spans for"
                " --otlp: restart the process with this pyprobes, or attach without --otlp"
            ) from None
        raise


def _program_name(welcome: Message, pid: int) -> str:
    """The target's name for the resource's ``service.name``: its script's or module's."""
    argv = welcome.get("argv")
    first = argv[0] if isinstance(argv, list) and argv and isinstance(argv[0], str) else ""
    name = os.path.splitext(os.path.basename(first))[0]
    if name == "__main__":  # python -m pkg: the package's directory
        name = os.path.basename(os.path.dirname(first))
    return name or f"python-{pid}"


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _attach(args: argparse.Namespace, specs: list[ProbeSpec]) -> int:
    aggregator = make_aggregator(args)
    conn = AgentConnection.open(args.pid, client=f"pyprobes attach (pid {os.getpid()})")
    otlp: OtlpExport | None = None
    try:
        aggregate: dict[str, object] | None = None
        spans = getattr(args, "otlp", None) is not None
        if aggregator is not None and not wants_events(args) and not spans:
            # Aggregations only: the target aggregates (probe programs where it can) and
            # sends what it gathered twice a second; no event crosses the socket.
            c = aggregator.config
            aggregate = {
                "hist": c.hist_field, "count": c.count, "by": c.by_field, "stats": c.stats_field,
                # several per --interval block, so each block holds its own period
                "every": min(0.5, max(0.05, (args.interval or 1.5) / 4)),
            }  # fmt: skip
            if c.lhist_field is not None and c.lhist_bounds is not None:
                aggregate["lhist"] = [c.lhist_field, *c.lhist_bounds]
        texts = [str(s) for s in specs]
        if spans:
            # --otlp: the target streams its events with their activation links; the spans
            # (and the aggregations, as OTLP metrics) are made and exported here.
            reply = _add_spans(conn, texts)
        elif aggregate is None:
            reply = conn.request("add", specs=texts)
        else:
            reply = conn.request("add", specs=texts, aggregate=aggregate)
        welcome = conn.welcome
        placed = reply.get("probes", [])
        pending = sum(int(p.get("pending", 0)) for p in placed if isinstance(p, dict))
        argv = welcome.get("argv") or []
        what = terminal_safe(" ".join(str(a) for a in argv[:4]) if isinstance(argv, list) else "")
        python = terminal_safe(str(welcome.get("python", "?")), 16)
        attached = (
            f"pyprobes: attached to {args.pid} (Python {python}: {what}):"
            f" {len(placed)} spec{'s' if len(placed) != 1 else ''}"
            + (f", {pending} pending" if pending else "")
            + ("; Ctrl-C to detach" if not args.duration else f"; detaching in {args.duration:g}s")
        )
        otlp = open_otlp(args, _program_name(welcome, args.pid), args.pid) if spans else None
        with open_output(args) as writer:
            stream = _Stream(
                conn,
                writer,
                aggregator,
                wants_events(args),
                otlp.emit if otlp is not None else None,
            )
            until = time.monotonic() + args.duration if args.duration else None
            metrics = start_metrics(args, stream.metrics, args.pid)
            if otlp is not None:
                otlp.start_metrics(stream.metrics)
            try:
                stream.pump(until, args.interval, lambda: _err(attached))
            except KeyboardInterrupt:
                pass
            except AgentGoneError as exc:
                stream.gone = stream.gone or str(exc)
            finally:
                if metrics is not None:
                    metrics.stop()
            if stream.gone is None:
                try:
                    stream.detach()
                except AgentGoneError as exc:
                    stream.gone = str(exc)
                except KeyboardInterrupt:  # a second Ctrl-C: go now; closing removes the probes
                    stream.gone = "detached without waiting for the last events"
            writer.close()
        if stream.gone is not None:
            _err(f"pyprobes: {stream.gone}")
        if aggregator is not None:
            _err(aggregator.render())
        failure = output_failure(args, writer)
        if failure is not None:
            _err(failure)
        _err(format_summary(stream.rows(), stream.lost_total()))
        if otlp is not None:
            finish_otlp(otlp)()  # the last spans and metrics (the summary's counts) go out
    finally:
        conn.close()
        if otlp is not None:
            otlp.finish(0.5)  # (after a failure; a no-op once finished)
    return 0
