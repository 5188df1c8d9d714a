"""``pyprobes run``: run a program with probes armed before its first line, print what they saw."""

from __future__ import annotations

import _thread
import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

import pyprobes
from pyprobes.cli import program
from pyprobes.cli.metrics import (
    add_metrics_options,
    check_metrics_options,
    session_reader,
    start_metrics,
)
from pyprobes.cli.options import (
    add_tracing_options,
    load_specs,
    make_aggregator,
    open_output,
    output_failure,
    wants_events,
)
from pyprobes.cli.otlp import (
    add_otlp_options,
    check_otlp_options,
    finish_otlp,
    open_otlp,
    spans_emit,
)
from pyprobes.output import Aggregator, Event, EventWriter, format_summary, interval_stamp
from pyprobes.tracer import TraceSession, programs
from pyprobes.tracer.records import RingSource


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``run`` subcommand."""
    p = sub.add_parser(
        "run",
        help="run a program with probes",
        description="Run SCRIPT (or -m MODULE) as __main__, exactly as python would, with the"
        " probes armed before its first line; events go to stderr (or -o), aggregations and a"
        " summary to stderr at the end.",
    )
    add_tracing_options(p)
    add_metrics_options(p)
    add_otlp_options(p)
    p.add_argument(
        "--listen",
        action="store_true",
        help="serve an attach agent while the program runs, for 'pyprobes attach/list PID'"
        " (then -e/-f are optional)",
    )
    p.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    p.add_argument("target", nargs="?", metavar="SCRIPT", help="the program to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")
    p.set_defaults(func=run)


def subparser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``run`` subcommand's parser inside the top-level one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices["run"]
            return sub
    raise LookupError("no run subcommand")


def _value_options(parser: argparse.ArgumentParser) -> tuple[dict[str, object], set[str]]:
    """The parser's option strings -> nargs, and the long ones (argparse accepts prefixes)."""
    nargs: dict[str, object] = {}
    for action in parser._actions:
        for opt in action.option_strings:
            nargs[opt] = action.nargs
    return nargs, {o for o in nargs if o.startswith("--")}


def split_program_args(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[list[str], str | None, str | None, list[str]]:
    """Split ``run``'s arguments where the program's begin, as ``python`` does: everything
    after SCRIPT or ``-m MODULE`` belongs to the program (``-m pytest -x -q``, ``-m mod -h``).

    Returns (our arguments, MODULE or None, SCRIPT or None, the program's arguments). Only our
    options are scanned, with their values skipped, so ``-e '-m'`` is a value, not a module.
    """
    nargs, longs = _value_options(parser)
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            if i + 1 < len(argv):
                return argv[:i], None, argv[i + 1], argv[i + 2 :]
            return argv[:i], None, None, []
        if tok == "-m":
            if i + 1 >= len(argv):
                return argv, None, None, []  # argparse says "expected one argument"
            return argv[:i], argv[i + 1], None, argv[i + 2 :]
        if tok.startswith("-m") and not tok.startswith("--"):
            return argv[:i], tok[2:], None, argv[i + 1 :]
        if not tok.startswith("-") or tok == "-":
            return argv[:i], None, tok, argv[i + 1 :]
        name = tok.split("=", 1)[0]
        if name.startswith("--") and name not in nargs:
            matches = [o for o in longs if o.startswith(name)]
            name = matches[0] if len(matches) == 1 else name
        elif not name.startswith("--") and len(tok) > 2:
            name = tok[:2]  # -eSPEC: the value is in the token
            i += 1
            continue
        n = nargs.get(name, 0)
        if "=" in tok or n == 0:
            i += 1
        elif n == "?":
            nxt = argv[i + 1] if i + 1 < len(argv) else "-"
            i += 1 if nxt.startswith("-") else 2
        else:
            i += 2
    return argv, None, None, []


class _Reporter:
    """Prints aggregations (every --interval, and once at the end) and the exit summary."""

    def __init__(
        self,
        session: TraceSession,
        writer: EventWriter,
        aggregator: Aggregator | None,
        args: argparse.Namespace,
        events: bool,
    ) -> None:
        self.session = session
        self.writer = writer
        self.aggregator = aggregator
        self.args = args
        self.events = events  # events are written: the summary says how many
        self._done = threading.Event()
        # The final report runs once, from main, the timer or a signal, and whoever comes
        # second waits for it to be written: the process must not exit (or die) mid-report.
        self._once = threading.Lock()
        self._reported = False
        self.after: list[Callable[[], None]] = []  # run once the report is out (stop the agent)

    def periodic(self, interval: float) -> None:
        with pyprobes.own_thread():  # rendering the aggregations is not the program's hits
            self._print_every(interval)

    def final_on_own_thread(self) -> None:
        """final() from a thread of ours (--duration's timer)."""
        with pyprobes.own_thread():
            self.final()

    def _print_every(self, interval: float) -> None:
        while not self._done.wait(interval):
            if self.aggregator is not None:
                self.session.collect()
                block = self.aggregator.snapshot_and_reset().render()
                _err(f"{interval_stamp(time.time())}\n{block}")

    def final(self) -> None:
        with self._once:
            if self._reported:
                return
            self._reported = True
            self._done.set()
            self.session.stop()
            self.session.collect()
            self.writer.close()
            if self.aggregator is not None:
                _err(self.aggregator.render())
            for event, n in self.session.key_overflow().items():
                _err(
                    f"pyprobes: warning: {event}: {n:,} hit{'' if n == 1 else 's'} of keys past"
                    f" the {programs.MAX_KEYS:,} kept per probe are in no key's count"
                )
            failure = output_failure(self.args, self.writer)
            if failure is not None:
                _err(failure)
            lost = self.writer.lost_by_event()
            written = self.writer.written_by_event() if self.events else None
            rows = self.session.summary_rows(lost, written)
            _err(format_summary(rows, sum(lost.values())))
            for after in self.after:
                after()


#: Signals that end the run as Ctrl-C does (with the report), then kill it as they would have.
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _end_and_die(end: Callable[[], None], signum: int) -> None:
    try:
        with pyprobes.own_thread():
            end()
    finally:
        os.kill(os.getpid(), signum)  # its disposition is SIG_DFL again: the process dies by it


def _end_on_signals(end: Callable[[], None]) -> None:
    """SIGTERM and SIGHUP run ``end`` (print the aggregations and summary, remove the agent's
    socket), then kill the program by that same signal (status -N / 128+N, as without
    pyprobes). Only where the disposition is the default: an ignored SIGHUP (nohup) stays
    ignored, and a handler the program installs replaces ours. The handler only starts a
    bare ``_thread`` (no ``threading`` lock, which the interrupted main thread may hold) that
    reports; a second signal kills at once."""
    pid = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        if os.getpid() != pid:  # a forked child: the parent reports
            os.kill(os.getpid(), signum)
            return
        _thread.start_new_thread(_end_and_die, (end, signum))

    for sig in TERMINATING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, handler)


def _drop(event: object) -> None:
    """The event sink when only aggregations are printed."""


def _err(text: str) -> None:
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def run(args: argparse.Namespace) -> int:
    """Run the program under the probes; returns its exit status."""
    from pyprobes.cli.options import UsageError, check_fields, fix_optional_field

    specs = [] if _listen_only(args) else load_specs(args)
    fix_optional_field(args, specs)
    specs = check_fields(args, specs)
    check_metrics_options(args)
    check_otlp_options(args, specs)
    if args.module is None and args.target is None:
        raise UsageError("give a SCRIPT to run, or -m MODULE (one of them)")
    if args.module is not None:
        prog = program.load_module(args.module, args.args)
    else:
        prog = program.load_script(args.target, args.args)
    if args.listen:
        _start_agent()
    if not specs:
        return _run_listening(prog)
    aggregator = make_aggregator(args)
    with open_output(args) as writer:
        events = wants_events(args)
        # Aggregations alone: the probes that can run as programs in the core do (no Python
        # call per hit); collect() folds their results in before each print.
        # Events: the probes whose records a program can write do, into the core's ring,
        # rendered on the writer's thread (JSON and text in C by the C core); the others keep
        # the Python path, and so does Chrome output (RingSource.takes says which).
        # --otlp: return events also become spans. The probes a program can record write
        # records (their activation's link in them) that the writer's thread hands to the
        # span thread, and writes when events are asked for in a format the ring takes.
        otlp = open_otlp(args, args.module or os.path.splitext(os.path.basename(prog.path))[0])
        takes = RingSource.takes(args.format or "text")
        records: RingSource | None = None
        if otlp is not None:
            if not events or takes:
                records = RingSource(spans=otlp.emit, spans_lost=otlp.dropped_early, write=events)
        elif events and takes:
            records = RingSource()
        if records is not None:
            records.wake_writer = writer.wake
            writer.add_source(records)
        emit: Callable[[Event], None] = writer.emit if events else _drop
        if otlp is not None:
            emit = spans_emit(otlp, writer.emit if events else None)
        session = TraceSession(
            specs, emit, aggregator, events=events, records=records, spans=otlp is not None
        )
        program.set_path0(prog)
        session.arm()
        try:
            # The program's own names are resolved on its compiled code before it runs: a
            # typo fails here, with "did you mean", not after the whole program ran.
            session.arm_main(prog.code, prog.names)
            metrics = start_metrics(args, session_reader(session, aggregator, writer))
            if otlp is not None:
                otlp.start_metrics(session_reader(session, aggregator, writer))
        except BaseException:
            session.stop()
            if otlp is not None:
                otlp.finish(0.5)
            raise
        reporter = _Reporter(session, writer, aggregator, args, events)
        if otlp is not None:
            reporter.after.append(finish_otlp(otlp))
        if args.listen:
            reporter.after.append(_stop_agent)
        if metrics is not None:
            reporter.after.append(metrics.stop)
        _end_on_signals(reporter.final)
        if args.interval:
            threading.Thread(
                target=reporter.periodic,
                args=(args.interval,),
                name="pyprobes-interval",
                daemon=True,
            ).start()
        if args.duration:
            timer = threading.Timer(args.duration, reporter.final_on_own_thread)
            timer.name = "pyprobes-duration"
            timer.daemon = True
            timer.start()
        try:
            status = program.run(prog, lambda code: None)
        finally:
            reporter.final()
    if status == program.KEYBOARD_INTERRUPT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    return status


# --- --listen: an attach agent while the program runs (pyprobes attach / list / ps) ----------


def _listen_only(args: argparse.Namespace) -> bool:
    """``--listen`` with no -e/-f: the program runs with the agent and no probes of its own."""
    return bool(args.listen) and not args.probe and not args.probe_file


def _start_agent() -> None:
    from pyprobes.agent import start

    start()


def _stop_agent() -> None:
    from pyprobes.agent import stop

    stop("the program ended")


def _run_listening(prog: program.Program) -> int:
    """Run the program with the agent only: its output and exit status are its own."""
    _end_on_signals(_stop_agent)
    try:
        status = program.run(prog, lambda code: None)
    finally:
        _stop_agent()
    if status == program.KEYBOARD_INTERRUPT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    return status
