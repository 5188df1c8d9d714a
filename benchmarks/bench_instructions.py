"""Instructions per hit, counted by valgrind's callgrind: the engine's cost without the noise.

Run ``python benchmarks/bench_instructions.py --help``. Timings on a shared VM move by several
per cent from run to run; instruction counts do not. For each contender of ``bench_engine.py``
(the same private copies of ``f(a, b): return a + b``, the same floors and probes), a child
process attaches the contender and makes ``--calls`` calls under callgrind, and another makes
none; the difference over ``--calls``, minus the baseline's, is the instructions a call gains.
Instructions are not time (cache misses and branch mispredictions are not counted), but they
are the stable half of the picture, and what a change to the hot path saves shows here first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import CALL_MEASURES  # (imports pyprobes; each child sets its own core)

NAMES = ("baseline", *CALL_MEASURES)
RATIOS = (
    ("kprobe", "floor-k"),
    ("kretprobe", "floor-r"),
    ("kretprobe", "kprobe"),
    ("kretprobe-h", "floor-r1"),
    ("kretprobe-h", "kprobe"),
)


def child(name: str, calls: int) -> None:
    """Attach one contender, make ``calls`` calls of its function, detach."""
    import bench_engine  # (pyprobes, with the core the parent set in the environment)

    (c,) = [c for c in bench_engine.build_contenders(depth=5) if c.name == name]
    c.attach()
    try:
        c.target.loop(calls // c.target.per_iter)
    finally:
        c.detach()


def instructions(core: str, name: str, calls: int) -> int:
    """Instructions callgrind counts for a child run (its whole process)."""
    env = dict(os.environ, PYPROBES_CORE=core)
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        name,
        str(calls),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr
    m = re.search(r"refs:\s+([\d,]+)", out)
    if m is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{out}")
    return int(m.group(1).replace(",", ""))


def measure(core: str, calls: int) -> dict[str, float]:
    """Instructions per call per contender (absolute for the baseline, added for the rest)."""
    per_call: dict[str, float] = {}
    for name in NAMES:
        busy = instructions(core, name, calls)
        idle = instructions(core, name, 0)
        per_call[name] = (busy - idle) / calls
        print(f"  {core} {name}: {per_call[name]:.0f} instructions per call", file=sys.stderr)
    base = per_call["baseline"]
    return {n: (v if n == "baseline" else v - base) for n, v in per_call.items()}


def markdown(results: dict[str, dict[str, float]], calls: int) -> str:
    cores = list(results)
    ver = sys.version.split()[0]
    out = [
        f"## CPython {ver}: instructions per call (callgrind)",
        "",
        f"`{Path(sys.executable)} benchmarks/bench_instructions.py --calls {calls}`: per"
        " contender, (instructions of a run with the calls - of one without) / calls; the rows"
        " below the baseline are added instructions.",
        "",
        "| measure | " + " | ".join(cores) + " |",
        "|---|" + "---:|" * len(cores),
    ]
    for n in NAMES:
        out.append(f"| {n} | " + " | ".join(f"{results[c][n]:.0f}" for c in cores) + " |")
    for a, b in RATIOS:
        cells = [f"{results[c][a] / results[c][b]:.2f}x" for c in cores]
        out.append(f"| {a}/{b} | " + " | ".join(cells) + " |")
    return "\n".join([*out, "", ""])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=20000, help="calls per run (default 20000)")
    ap.add_argument(
        "--core", action="append", choices=["python", "c"], help="core(s) to count (default: both)"
    )
    ap.add_argument("--markdown", metavar="FILE", help="write the result as a Markdown section")
    ap.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    ap.add_argument("--child", nargs=2, metavar=("NAME", "CALLS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print(
            "bench_instructions: valgrind is not installed (apt install valgrind)", file=sys.stderr
        )
        return 2
    if args.calls < 10000 or args.calls % 10:
        ap.error("--calls must be a multiple of 10, at least 10000 (fewer: warm-up shows)")
    results = {core: measure(core, args.calls) for core in args.core or ["python", "c"]}
    text = markdown(results, args.calls)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    else:
        print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
