"""Return probes under load (issue 7, part 3): the workload traced by ``pyprobes run``.

Runs, in interleaved rounds (shuffled order each round), from the repository root:

- plain: ``python -m benchmarks.workload SCALE``
- traced: ``python -m pyprobes run -e 'r:wl benchmarks.workload.MODULE:*' --format json
  -o FILE -m benchmarks.workload SCALE`` (kretprobes on every function of one module), with
  the default core and, when that is the C core, again with ``PYPROBES_CORE=python``; and the
  same as text lines (no ``--format``), the default core;
- viztracer, when it is installed, what a user would pick instead (issue 13), tracing every
  call (``python -m viztracer --quiet -o FILE.json -m benchmarks.workload SCALE``): its include
  filter records nothing under ``-m`` (a call is recorded only when its caller is, and runpy's
  are not: gaogaotiantian/viztracer#292), so it cannot trace one module alone.

Reports the slowdown (whole process, and the workload's own ``main()`` time that it prints),
the events written (lines of FILE, checked against the hits of the exit summary), events per
second (events written / traced process time) and the events lost (the summary's
``N events lost`` line on stderr). Every traced run must print the plain run's checksum.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from benchlib import ROOT, Stat, cell, paired

benchlib.ensure_paths()

import pyprobes
from pyprobes.output.summary import parse_summary

_CHECKSUM = re.compile(r"^checksum (\d+) elapsed_ns (\d+)$", re.M)
_LOST = re.compile(r"^(\d+) events? lost$", re.M)


@dataclass
class Variant:
    """One way of running the workload."""

    key: str
    label: str
    argv: list[str]
    env: dict[str, str]
    traced: bool
    out: Path | None = None
    wall: list[float] = field(default_factory=list)  # seconds, whole process
    main: list[float] = field(default_factory=list)  # seconds, the workload's main()
    events: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)


def spec_for(module: str) -> str:
    return f"r:wl benchmarks.workload.{module}:*"


def make_variants(args: argparse.Namespace, tmp: Path) -> list[Variant]:
    py = sys.executable
    env = dict(os.environ)
    env.pop("PYPROBES_CORE", None)
    try:  # installed (the peers venv) or not: then the src/ layout
        subprocess.run(
            [py, "-c", "import pyprobes"], env=env, check=True, capture_output=True, cwd=ROOT
        )
    except subprocess.CalledProcessError:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(benchlib.SRC), env.get("PYTHONPATH")])
        )
    scale = str(args.scale)
    plain = Variant(
        "plain",
        f"`python -m benchmarks.workload {scale}` (no probes)",
        [py, "-m", "benchmarks.workload", scale],
        env,
        traced=False,
    )
    out = [plain]
    cores = [pyprobes.core_name()]
    if cores[0] == "c" and not args.no_python_core:
        cores.append("python")
    run = [py, "-m", "pyprobes", "run", "-e", spec_for(args.module)]
    for core in cores:
        f = tmp / f"events-{core}.jsonl"
        argv = [*run, "--format", "json", "-o", str(f), "-m", "benchmarks.workload", scale]
        venv = {**env, "PYPROBES_CORE": core} if core == "python" else env
        out.append(Variant(f"traced-{core}", f"traced, {core} core", argv, venv, True, f))
    f = tmp / "events.txt"
    argv = [*run, "-o", str(f), "-m", "benchmarks.workload", scale]
    out.append(Variant("traced-text", f"traced, text lines, {cores[0]} core", argv, env, True, f))
    if importlib.util.find_spec("viztracer") is not None:
        f = tmp / "viztracer.json"
        argv = [py, "-m", "viztracer", "--quiet", "-o", str(f), "-m", "benchmarks.workload"]
        label = "viztracer, every call (its include filter records nothing under -m)"
        out.append(Variant("viztracer", label, [*argv, scale], env, True, f))
    return out


def run_once(v: Variant, checksum: list[int]) -> None:
    if v.out is not None and v.out.exists():
        v.out.unlink()
    t0 = time.perf_counter()
    proc = subprocess.run(v.argv, env=v.env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{v.key} exited {proc.returncode}: {proc.stderr[-2000:]}")
    m = _CHECKSUM.search(proc.stdout)
    if m is None:
        raise RuntimeError(f"{v.key}: no checksum line in {proc.stdout[-500:]!r}")
    got = int(m.group(1))
    if not checksum:
        checksum.append(got)
    elif got != checksum[0]:
        raise RuntimeError(f"{v.key}: checksum {got}, the plain run printed {checksum[0]}")
    v.wall.append(wall)
    v.main.append(int(m.group(2)) / 1e9)
    if v.out is None:
        return
    if v.key == "viztracer":  # its complete events ("X"): one per traced call
        with v.out.open("rb") as f:
            trace = json.load(f)
        v.events.append(sum(1 for e in trace["traceEvents"] if e.get("ph") == "X"))
        v.lost.append(0)
        v.hits.append(v.events[-1])
        v.out.unlink()
        return
    lost = _LOST.search(proc.stderr)
    if lost is None:
        raise RuntimeError(f"{v.key}: no 'N events lost' line in {proc.stderr[-500:]!r}")
    row = parse_summary(proc.stderr).get("wl")
    if row is None:
        raise RuntimeError(f"{v.key}: no summary row of wl in {proc.stderr[-500:]!r}")
    with v.out.open("rb") as f:
        events = sum(1 for _ in f)
    v.events.append(events)
    v.lost.append(int(lost.group(1)))
    v.hits.append(row["HITS"])
    if events != row["EVENTS"] or events + row["LOST"] + row["FILTERED"] != row["HITS"]:
        raise RuntimeError(f"{v.key}: {events} lines in the file, the summary says {row}")
    v.out.unlink()


def run(args: argparse.Namespace, progress: Any) -> dict[str, Any]:
    started = time.perf_counter()
    checksum: list[int] = []
    with tempfile.TemporaryDirectory(prefix="pyprobes-bench-tracer-") as tmp:
        variants = make_variants(args, Path(tmp))
        run_once(variants[0], checksum)  # the plain checksum first, and a warm page cache
        for v in variants[1:]:
            run_once(v, checksum)
        for v in variants:
            v.wall.clear()
            v.main.clear()
            v.events.clear()
            v.lost.clear()
            v.hits.clear()
        rng = random.Random(args.seed)
        order = list(variants)
        for r in range(args.rounds):
            rng.shuffle(order)
            for v in order:
                run_once(v, checksum)
            progress(f"part 3: round {r + 1}/{args.rounds}")
    return {
        "command": benchlib.exact_command(),
        "facts": benchlib.facts(),
        "config": {"rounds": args.rounds, "scale": args.scale, "module": args.module},
        "seconds": round(time.perf_counter() - started, 1),
        "checksum": checksum[0],
        "spec": spec_for(args.module),
        "variants": {
            v.key: {
                "label": v.label,
                "command": _show(v),
                "wall": v.wall,
                "main": v.main,
                "events": v.events,
                "lost": v.lost,
                "hits": v.hits,
            }
            for v in variants
        },
    }


def _show(v: Variant) -> str:
    argv = [Path(v.argv[0]).name if i == 0 else a for i, a in enumerate(v.argv)]
    if v.out is not None:
        argv[argv.index(str(v.out))] = "FILE"
    core = "PYPROBES_CORE=python " if v.env.get("PYPROBES_CORE") == "python" else ""
    return core + shlex.join(argv)


# --- report (also used by peers_report.py) -------------------------------------------------------


def stats(data: dict[str, Any], key: str) -> dict[str, Stat] | None:
    """Slowdowns, events per second and lost events of a traced variant."""
    vs = data["variants"]
    if key not in vs:
        return None
    v, plain = vs[key], vs["plain"]
    out = {
        "wall": Stat.of(v["wall"]),
        "main": Stat.of(v["main"]),
        "wall_pct": Stat.of(paired(v["wall"], plain["wall"], "pct")),
        "main_pct": Stat.of(paired(v["main"], plain["main"], "pct")),
    }
    if v["events"]:
        out["events"] = Stat.of([float(e) for e in v["events"]])
        out["eps"] = Stat.of([e / w for e, w in zip(v["events"], v["wall"], strict=True)])
        out["lost"] = Stat.of([float(x) for x in v["lost"]])
    return out


def table(data: dict[str, Any]) -> tuple[str, list[str], list[list[str]], list[str]]:
    headers = [
        "run",
        "process: s",
        "slowdown",
        "workload main(): s",
        "slowdown",
        "events written",
        "events/s",
        "events lost (max)",
    ]
    rows = []
    for key, v in data["variants"].items():
        st = stats(data, key)
        assert st is not None
        if key == "plain":
            rows.append(
                [v["label"], cell(st["wall"], "s"), "", cell(st["main"], "s"), "", "", "", ""]
            )
            continue
        rows.append(
            [
                v["label"],
                cell(st["wall"], "s"),
                cell(st["wall_pct"], "%"),
                cell(st["main"], "s"),
                cell(st["main_pct"], "%"),
                f"{st['events'].median:,.0f}",
                f"{st['eps'].median:,.0f}",
                f"{max(v['lost'])}",
            ]
        )
    cfg = data["config"]
    notes = [
        f"spec `{data['spec']}` (kretprobes on every function of"
        f" `benchmarks.workload.{cfg['module']}`), events as JSON lines (or text lines) to a"
        f" file; viztracer's events are its complete (X) events; workload scale"
        f" {cfg['scale']}; {cfg['rounds']} interleaved rounds, median (IQR); slowdown per round"
        " against the same round's plain run.",
        "process = wall time of the whole command (interpreter start, pyprobes import and arming,"
        " the writer's final drain); main() = the time the workload itself reports.",
        "events/s = events written / traced process time; pyprobes: the lines written are the"
        " summary's EVENTS, and EVENTS + LOST + FILTERED its HITS (checked); every run printed"
        f" checksum {data['checksum']}.",
        "commands (from the repository root): "
        + "; ".join(f"`{v['command']}`" for v in data["variants"].values()),
    ]
    return "Part 3: return probes under load, through `pyprobes run`", headers, rows, notes


def render_text(data: dict[str, Any]) -> str:
    title, headers, rows, notes = table(data)
    f = data["facts"]
    return "\n".join(
        [
            f"pyprobes run under load: CPython {f['python']}, default core {f['core']!r},"
            f" {f['date']}",
            f"command: {data['command']}",
            "",
            title,
            benchlib.text_table(headers, [[c.replace("`", "") for c in r] for r in rows]),
            *notes,
        ]
    )


def markdown(data: dict[str, Any], level: int = 3) -> str:
    title, headers, rows, notes = table(data)
    out = [f"{'#' * level} {title}", "", benchlib.md_table(headers, rows), ""]
    return "\n".join([*out, *(f"- {n}" for n in notes), ""])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--scale", type=float, default=0.5, help="workload scale (default 0.5)")
    ap.add_argument(
        "--module", default="orders", help="workload module to return-probe (default orders)"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the round orders (default 0)")
    ap.add_argument(
        "--no-python-core",
        action="store_true",
        help="with the C core: do not also trace with PYPROBES_CORE=python",
    )
    ap.add_argument("--quick", action="store_true", help="2 rounds at scale 0.2: a smoke test")
    ap.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    ap.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.scale = 2, 0.2
    if args.rounds < 1 or args.scale <= 0:
        ap.error("--rounds must be >= 1 and --scale > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def progress(msg: str) -> None:
        print(f"[bench_tracer {sys.version.split()[0]}] {msg}", file=sys.stderr, flush=True)

    data = run(args, progress)
    print(render_text(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(markdown(data), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
