"""Instruction counts of one part-1 contender under callgrind: where a missed goal's time goes.

``python benchmarks/callgrind_peers.py TASK TOOL`` runs ``valgrind --tool=callgrind`` twice on
this script's ``--run`` mode (the same contender code as bench_peers.py, attached the same way,
for a small and a large number of calls), prints the instructions added per call (large minus
small, over the extra calls, minus the same for the no-tool baseline) and the functions that
take them (per function, exclusive: the contender's extra instructions minus the baseline's,
per call). Instruction counts do not depend on the load of the machine. Example::

    python benchmarks/callgrind_peers.py count pyprobes-k     # Kprobe (a) vs ...
    python benchmarks/callgrind_peers.py count floor          # ... its floor
    python benchmarks/callgrind_peers.py tracer orders        # one `pyprobes run` (part 3)

TASK is count, args or ret (part 1) and TOOL one of bench_peers.TOOL_LABELS; ``tracer MODULE``
profiles ``pyprobes run -e 'r:wl benchmarks.workload.MODULE:*' --format json -o FILE`` on the
workload against the plain workload.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SMALL, LARGE = 2_000, 22_000  # loop iterations (x10 calls) of the two runs


def run_mode(task: str, tool: str, iters: int) -> None:
    """Attach the contender as bench_peers does, run its loop, detach (under callgrind)."""
    sys.path.insert(0, str(HERE))
    import bench_peers as bp

    tools = bp.tool_attachers(bp.load_peers())
    site, loop = bp.make_call_target(f"f_cg_{tool.replace('-', '_')}")
    box = bp.Box()
    box.reset(exact=False)
    detach = None if tool == "none" else tools[tool](task, [site], box)  # type: ignore[operator]
    try:
        loop(iters)
    finally:
        if detach is not None:
            detach()


SIM: list[str] = []  # --sim: callgrind's cache and branch simulation
EVENTS: dict[Path, dict[str, int]] = {}  # every event's total, per output file


def callgrind(argv: list[str], out: Path, env: dict[str, str] | None = None) -> int:
    """Run argv under callgrind; the total instructions (Ir)."""
    subprocess.run(
        ["valgrind", "--tool=callgrind", *SIM, f"--callgrind-out-file={out}", *argv],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env=env,
    )
    text = out.read_text(errors="replace")
    names = re.search(r"^events:\s+(.*)$", text, re.M)
    m = re.search(r"^(?:summary|totals):\s+([\d ]+)$", text, re.M)
    if m is None or names is None:
        raise RuntimeError(f"no totals in {out}")
    EVENTS[out] = dict(zip(names.group(1).split(), map(int, m.group(1).split()), strict=False))
    return EVENTS[out]["Ir"]


def exclusive(out: Path) -> dict[str, int]:
    """Instructions per function (exclusive), from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    costs: dict[str, int] = {}
    for ln in text.splitlines():
        m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[(.*)\])?$", ln)
        if m is None or "PROGRAM TOTALS" in ln:
            continue
        where = m.group(2)
        file, _, func = where.rpartition(":")
        name = f"{Path(file).name}:{func}" if file else func
        obj = Path(m.group(3)).name if m.group(3) else ""
        key = f"{name} [{obj}]" if obj else name
        costs[key] = costs.get(key, 0) + int(m.group(1).replace(",", ""))
    return costs


def diff_table(
    runs: dict[str, dict[str, int]], per: float, top: int, base: tuple[str, str] | None
) -> str:
    """Per function: (tool.large - tool.small) - (base.large - base.small), divided by per."""
    keys = set().union(*runs.values())
    added: dict[str, float] = {}
    for k in keys:
        v = runs["large"].get(k, 0) - runs.get("small", {}).get(k, 0)
        if base is not None:
            v -= runs[base[0]].get(k, 0) - runs.get(base[1], {}).get(k, 0)
        added[k] = v / per
    rows = sorted(added.items(), key=lambda kv: -abs(kv[1]))[:top]
    total = sum(added.values())
    out = [f"{'instr/call':>10}  {'share':>6}  function (exclusive)"]
    out += [f"{v:10.1f}  {100 * v / total:5.1f}%  {k}" for k, v in rows if abs(v) >= 0.5]
    return "\n".join(out)


def profile_p1(task: str, tool: str, top: int, keep: Path | None) -> None:
    me = [sys.executable, str(Path(__file__).resolve()), "--run"]
    extra = (LARGE - SMALL) * 10
    for who in ("none", tool):  # once without valgrind: every .pyc is written before counting
        subprocess.run([*me, task, who, "10"], check=True, cwd=ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        totals: dict[str, int] = {}
        runs: dict[str, dict[str, int]] = {}
        # The baseline (nothing attached) is the same for every profile: kept between runs.
        cache = Path(tempfile.gettempdir()) / f"pyprobes-callgrind-baseline-{sys.version}.json"
        cache = cache.with_name(re.sub(r"[^\w.-]+", "_", cache.name))
        if cache.exists():
            saved = json.loads(cache.read_text())
            totals.update(saved["totals"])
            runs.update(saved["runs"])
        for who in ("none", tool):
            for size, iters in (("small", SMALL), ("large", LARGE)):
                key = f"{who}.{size}"
                if key in totals:
                    continue
                totals[key] = callgrind([*me, task, who, str(iters)], t / key)
                runs[key] = exclusive(t / key)
        if not cache.exists():
            keep_keys = ("none.small", "none.large")
            cache.write_text(
                json.dumps(
                    {
                        "totals": {k: totals[k] for k in keep_keys},
                        "runs": {k: runs[k] for k in keep_keys},
                    }
                )
            )
        base = (totals["none.large"] - totals["none.small"]) / extra
        mine = (totals[f"{tool}.large"] - totals[f"{tool}.small"]) / extra
        print(
            f"{task} {tool}: {mine:.0f} instructions per call of the loop, baseline {base:.0f}:"
            f" {mine - base:.0f} added per call; where they go:"
        )
        table = {
            "large": runs[f"{tool}.large"],
            "small": runs[f"{tool}.small"],
            "none.large": runs["none.large"],
            "none.small": runs["none.small"],
        }
        if SIM:
            sim = {
                k: (EVENTS[t / f"{tool}.large"][k] - EVENTS[t / f"{tool}.small"][k]) / extra
                for k in EVENTS[t / f"{tool}.large"]
            }
            print(
                "per call (cache/branch simulation, not net of the baseline): "
                + ", ".join(f"{k} {v:.1f}" for k, v in sim.items())
            )
        print(diff_table(table, extra, top, ("none.large", "none.small")))
        if keep is not None:
            shutil.copy(t / f"{tool}.large", keep)


def profile_tracer(module: str, scale: str, top: int, keep: Path | None) -> None:
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        env = dict(os.environ)
        subprocess.run(  # once without valgrind: every .pyc is written before counting
            [
                py,
                "-m",
                "pyprobes",
                "run",
                "-e",
                f"r:wl benchmarks.workload.{module}:*",
                "-o",
                os.devnull,
                "-m",
                "benchmarks.workload",
                "0.01",
            ],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        plain = callgrind([py, "-m", "benchmarks.workload", scale], t / "plain", env)
        traced = callgrind(
            [
                py,
                "-m",
                "pyprobes",
                "run",
                "-e",
                f"r:wl benchmarks.workload.{module}:*",
                "--format",
                "json",
                "-o",
                str(t / "events.jsonl"),
                "-m",
                "benchmarks.workload",
                scale,
            ],
            t / "traced",
            env,
        )
        events = sum(1 for _ in (t / "events.jsonl").open("rb"))
        print(
            f"pyprobes run on {module}, scale {scale}: {traced:,} instructions, plain {plain:,};"
            f" {events:,} events: {(traced - plain) / max(events, 1):,.0f} instructions per"
            " event; where they go:"
        )
        runs = {"large": exclusive(t / "traced"), "plain": exclusive(t / "plain")}
        print(diff_table(runs, max(events, 1), top, ("plain", "none")))
        if keep is not None:
            shutil.copy(t / "traced", keep)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("task", help="count, args, ret (part 1), or tracer")
    ap.add_argument("tool", help="a bench_peers tool, or for tracer the workload module")
    ap.add_argument("iters", nargs="?", type=int, default=LARGE, help=argparse.SUPPRESS)
    ap.add_argument("--top", type=int, default=40, help="functions to show (default 40)")
    ap.add_argument("--scale", default="0.1", help="tracer: workload scale (default 0.1)")
    ap.add_argument("--keep", type=Path, help="copy the large run's callgrind.out here")
    ap.add_argument(
        "--sim",
        action="store_true",
        help="also simulate caches and branches (D1/LL misses, mispredictions per call)",
    )
    args = ap.parse_args(argv)
    if args.sim:
        SIM.extend(["--cache-sim=yes", "--branch-sim=yes"])
    if args.run:
        run_mode(args.task, args.tool, args.iters)
        return 0
    if shutil.which("valgrind") is None:
        print("error: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    if args.task == "tracer":
        profile_tracer(args.tool, args.scale, args.top, args.keep)
    else:
        profile_p1(args.task, args.tool, args.top, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
