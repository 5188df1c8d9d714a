"""``pyprobes run``: run a program with probes armed before its first line, print what they saw."""

from __future__ import annotations

import _thread
import argparse
import os
import signal
import sys
import threading
from types import FrameType

from pyprobes.cli import program
from pyprobes.cli.options import (
    add_tracing_options,
    load_specs,
    make_aggregator,
    open_output,
    output_failure,
)
from pyprobes.output import Aggregator, EventWriter, format_summary
from pyprobes.tracer import TraceSession


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


class _Reporter:
    """Prints aggregations (every --interval, and once at the end) and the exit summary."""

    def __init__(
        self,
        session: TraceSession,
        writer: EventWriter,
        aggregator: Aggregator | None,
        args: argparse.Namespace,
    ) -> None:
        self.session = session
        self.writer = writer
        self.aggregator = aggregator
        self.args = args
        self._done = threading.Event()
        # The final report runs once, from main, the timer or a signal, and whoever comes
        # second waits for it to be written: the process must not exit (or die) mid-report.
        self._once = threading.Lock()
        self._reported = False

    def periodic(self, interval: float) -> None:
        while not self._done.wait(interval):
            if self.aggregator is not None:
                _err(self.aggregator.snapshot_and_reset().render())

    def final(self) -> None:
        with self._once:
            if self._reported:
                return
            self._reported = True
            self._done.set()
            self.session.stop()
            self.writer.close()
            if self.aggregator is not None:
                _err(self.aggregator.render())
            failure = output_failure(self.args, self.writer)
            if failure is not None:
                _err(failure)
            lost = self.writer.lost_by_event()
            _err(format_summary(self.session.summary_rows(lost), sum(lost.values())))


#: Signals that end the run as Ctrl-C does (with the report), then kill it as they would have.
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _report_and_die(reporter: _Reporter, signum: int) -> None:
    reporter.final()
    os.kill(os.getpid(), signum)  # its disposition is SIG_DFL again: the process dies by it


def _end_on_signals(reporter: _Reporter) -> None:
    """SIGTERM and SIGHUP print the aggregations and summary, then kill the program by that
    same signal (status -N / 128+N, as without pyprobes). Only where the disposition is the
    default: an ignored SIGHUP (nohup) stays ignored, and a handler the program installs
    replaces ours. The handler only starts a bare ``_thread`` (no ``threading`` lock, which
    the interrupted main thread may hold) that reports; a second signal kills at once."""
    pid = os.getpid()

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        if os.getpid() != pid:  # a forked child: the parent reports
            os.kill(os.getpid(), signum)
            return
        _thread.start_new_thread(_report_and_die, (reporter, signum))

    for sig in TERMINATING:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, handler)


def _err(text: str) -> None:
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def run(args: argparse.Namespace) -> int:
    """Run the program under the probes; returns its exit status."""
    from pyprobes.cli.options import UsageError, fix_optional_field

    specs = [] if _listen_only(args) else load_specs(args)
    fix_optional_field(args, specs)
    if args.module is None and args.target is None:
        raise UsageError("give a SCRIPT to run, or -m MODULE (one of them)")
    if args.module is not None:
        rest = ([args.target] if args.target is not None else []) + args.args
        prog = program.load_module(args.module, rest)
    else:
        prog = program.load_script(args.target, args.args)
    if args.listen:
        _start_agent()
    if not specs:
        return _run_listening(prog)
    aggregator = make_aggregator(args)
    with open_output(args) as writer:
        session = TraceSession(specs, writer.emit, aggregator)
        program.set_path0(prog)
        session.arm()
        reporter = _Reporter(session, writer, aggregator, args)
        _end_on_signals(reporter)
        if args.interval:
            threading.Thread(
                target=reporter.periodic,
                args=(args.interval,),
                name="pyprobes-interval",
                daemon=True,
            ).start()
        if args.duration:
            timer = threading.Timer(args.duration, reporter.final)
            timer.name = "pyprobes-duration"
            timer.daemon = True
            timer.start()
        try:
            status = program.run(prog, lambda code: session.arm_main(code, prog.names))
        finally:
            reporter.final()
    if args.listen:
        _stop_agent()
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
    try:
        status = program.run(prog, lambda code: None)
    finally:
        _stop_agent()
    if status == program.KEYBOARD_INTERRUPT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    return status
