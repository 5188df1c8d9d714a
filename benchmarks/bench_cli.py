"""What one probe costs through the command users run (issue 13), beside the tools they would
pick instead: ``pyprobes run`` with aggregations (probe programs in the core), with events
(JSON and text from the core's ring of records), cProfile, and viztracer
when it is installed.

The program calls ``work(a, b)`` N times and prints the loop's own time (perf_counter_ns), so
interpreter and tool start-up are not counted. Each variant runs as a fresh process, in
interleaved rounds (shuffled order each round); the table gives, per variant, the median of
``(loop - plain loop) / N``: ns added per call, and the ratio to the engine's floor (an empty
Python kretprobe handler, run in-process by ``Kretprobe``).

    python benchmarks/bench_cli.py [--rounds 7] [--calls 200000] [--md FILE] [--only KEY,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from benchlib import ROOT, Stat, cell, paired

benchlib.ensure_paths()

PROGRAM = """\
import sys, time
import pyprobes_bench_floor as floor

def work(a, b):
    return a + b

def main(n):
    if floor.MODE:
        floor.arm(work)
    t0 = time.perf_counter_ns()
    s = 0
    for i in range(n):
        s = work(s, i)
    t1 = time.perf_counter_ns()
    floor.disarm()
    print(f"loop_ns {t1 - t0} checksum {s}", flush=True)

main(int(sys.argv[1]))
"""

# In-process engine floor: a Kretprobe with an empty Python handler (no CLI, no output).
FLOOR = """\
import os
MODE = os.environ.get("BENCH_FLOOR") == "1"
_probe = None

def arm(fn):
    global _probe
    import pyprobes
    _probe = pyprobes.Kretprobe(addr=fn, handler=lambda ri, ctx: None)
    pyprobes.register_kretprobe(_probe)

def disarm():
    if _probe is not None:
        import pyprobes
        pyprobes.unregister_kretprobe(_probe)
"""

_LOOP = re.compile(r"loop_ns (\d+) checksum (\d+)")
_SENT = re.compile(r"^pyprobes: OTLP: ([\d,]+) spans? sent", re.M)


@dataclass
class Variant:
    """One way of running the program."""

    key: str
    label: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    loop_ns: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # --otlp: spans the receiver took, per run


def variants(prog: Path, out: Path, calls: int, sink: str) -> list[Variant]:
    py = sys.executable
    n = str(calls)
    run = [py, "-m", "pyprobes", "run"]
    vs = [
        Variant("plain", "plain python", [py, str(prog), n]),
        Variant("floor", "engine: Kretprobe, empty Python handler", [py, str(prog), n],
                {"BENCH_FLOOR": "1"}),
        Variant("p-count", "pyprobes run -e 'p:w __main__:work' --count",
                [*run, "-e", "p:w __main__:work", "--count", str(prog), n]),
        Variant("r-hist", "pyprobes run -e 'r:w __main__:work' --hist",
                [*run, "-e", "r:w __main__:work", "--hist", str(prog), n]),
        Variant("r-hist-by", "pyprobes run -e 'r:w __main__:work a' --hist --by a (a key per call)",
                [*run, "-e", "r:w __main__:work a", "--hist", "--by", "a", str(prog), n]),
        Variant("r-stats", "pyprobes run -e 'r:w __main__:work' --stats '$duration'",
                [*run, "-e", "r:w __main__:work", "--stats", "$duration", str(prog), n]),
        Variant("r-stats-python",
                "pyprobes run -e 'r:w __main__:work a b if a != b' --stats '$duration' "
                "(a filter programs do not run: the Python path)",
                [*run, "-e", "r:w __main__:work a b if a != b", "--stats", "$duration",
                 str(prog), n]),
        Variant("r-hist-events", "pyprobes run -e 'r:w __main__:work' --hist --events -o /dev/null",
                [*run, "-e", "r:w __main__:work", "--hist", "--events", "-o", os.devnull,
                 str(prog), n]),
        Variant("r-json", "pyprobes run -e 'r:w __main__:work' --format json -o FILE",
                [*run, "-e", "r:w __main__:work", "--format", "json", "-o", str(out),
                 str(prog), n]),
        Variant("r-json-args",
                "pyprobes run -e 'r:w __main__:work a b $retval' --format json -o FILE",
                [*run, "-e", "r:w __main__:work a b $retval", "--format", "json", "-o",
                 str(out), str(prog), n]),
        Variant("r-text-events", "pyprobes run -e 'r:w __main__:work' -o FILE (text)",
                [*run, "-e", "r:w __main__:work", "-o", str(out), str(prog), n]),
        Variant("r-hist-prom", "pyprobes run -e 'r:w __main__:work' --hist --metrics-port 0",
                [*run, "-e", "r:w __main__:work", "--hist", "--metrics-port", "0", str(prog), n]),
        Variant("r-chrome", "pyprobes run -e 'r:w __main__:work' --format chrome -o FILE",
                [*run, "-e", "r:w __main__:work", "--format", "chrome", "-o", str(out),
                 str(prog), n]),
        Variant("r-otlp", "pyprobes run -e 'r:w __main__:work' --otlp URL (no receiver: spans "
                "counted lost)",
                [*run, "-e", "r:w __main__:work", "--otlp", "http://127.0.0.1:9", str(prog), n]),
        Variant("r-otlp-recv", "pyprobes run -e 'r:w __main__:work' --otlp URL (a receiver that"
                " takes every export)",
                [*run, "-e", "r:w __main__:work", "--otlp", sink, str(prog), n]),
        Variant("cprofile", "python -m cProfile (every call)",
                [py, "-m", "cProfile", "-o", os.devnull, str(prog), n]),
    ]  # fmt: skip
    if importlib.util.find_spec("viztracer") is not None:
        viz_out = str(out.with_suffix(".viz.json"))
        viz = [py, "-m", "viztracer", "--quiet", "-o", viz_out, str(prog), n]
        vs.append(Variant("viztracer", "viztracer (every call, to a file)", viz))
    return vs


def run_once(v: Variant, cwd: Path, checksum: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT / "src")]), **v.env}
    p = subprocess.run(
        v.argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=600, check=False
    )
    m = _LOOP.search(p.stdout)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"{v.key} failed ({p.returncode}): {p.stderr[-2000:]}")
    if checksum and m.group(2) != checksum[0]:
        raise SystemExit(f"{v.key} changed the program's result: {m.group(2)} != {checksum[0]}")
    checksum[:] = [m.group(2)]
    v.loop_ns.append(float(m.group(1)))
    if "--otlp" in v.argv:
        sent = _SENT.search(p.stderr)
        if sent is None:
            raise SystemExit(f"{v.key} reported no spans sent: {p.stderr[-2000:]}")
        v.sent.append(int(sent.group(1).replace(",", "")))


def start_sink() -> tuple[subprocess.Popen[str], str]:
    """The discarding OTLP receiver (benchmarks/otlp_sink.py) in a process of its own."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("otlp_sink.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise SystemExit(f"otlp_sink.py did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--md", type=Path, help="also write the table as Markdown here")
    ap.add_argument("--only", help="comma-separated variant keys (plain and floor always run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        prog = cwd / "work_prog.py"
        prog.write_text(PROGRAM)
        (cwd / "pyprobes_bench_floor.py").write_text(FLOOR)
        sink, sink_url = start_sink()
        try:
            vs = run_variants(args, prog, cwd, sink_url)
        finally:
            sink.kill()
            sink.wait()
    report(args, vs)


def run_variants(args: argparse.Namespace, prog: Path, cwd: Path, sink_url: str) -> list[Variant]:
    """Every variant asked for, ``args.rounds`` times, in a new order each round."""
    vs = variants(prog, cwd / "events.jsonl", args.calls, sink_url)
    if args.only:
        keep = {"plain", "floor", *args.only.split(",")}
        unknown = keep - {v.key for v in vs}
        if unknown:
            raise SystemExit(
                f"--only: no variant {', '.join(sorted(unknown))}; the keys"
                f" are {', '.join(v.key for v in vs)}"
            )
        vs = [v for v in vs if v.key in keep]
    checksum: list[str] = []
    for _ in range(args.rounds):
        order = vs[:]
        random.shuffle(order)
        for v in order:
            run_once(v, cwd, checksum)
    return vs


def _median(values: list[int]) -> float:
    return Stat.of([float(n) for n in values]).median


def report(args: argparse.Namespace, vs: list[Variant]) -> None:
    """The table (and, for --otlp, the spans delivered), on stdout and in ``--md``."""
    plain = vs[0]
    added = {v.key: paired(v.loop_ns, plain.loop_ns, "diff", args.calls) for v in vs[1:]}
    floor_added = added["floor"]
    rows = []
    for v in vs[1:]:
        ratio = paired(added[v.key], floor_added, "ratio")
        rows.append([v.label, cell(Stat.of(added[v.key]), "ns"), cell(Stat.of(ratio), "x", False)])
    core = os.environ.get("PYPROBES_CORE", "default")
    title = (
        f"CPython {sys.version.split()[0]}, core {core}, {args.calls:,} calls, {args.rounds}"
        f" rounds; plain loop median {Stat.of(plain.loop_ns).median / args.calls:.1f} ns/call"
    )
    headers = ["variant", "ns added per call, median (q1 .. q3)", "x the engine floor"]
    sent = [
        f"- {v.label}: spans delivered per run, median {_median(v.sent):,.0f} of"
        f" {args.calls:,} (the rest dropped before export or by the export queue, counted)"
        for v in vs
        if v.sent
    ]
    print(title)
    print(benchlib.text_table(headers, rows))
    print("\n".join(sent))
    if args.md is not None:
        notes = "\n\n" + "\n".join(sent) if sent else ""
        args.md.write_text(f"{title}\n\n{benchlib.md_table(headers, rows)}\n{notes}\n")


if __name__ == "__main__":
    main()
