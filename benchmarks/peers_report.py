"""Assemble benchmarks/RESULTS-peers.md from the JSON of bench_peers.py and bench_tracer.py.

``python benchmarks/peers_report.py DIR --out FILE [--command TEXT]`` reads
``DIR/X.Y-peers.json`` and ``DIR/X.Y-tracer.json`` for every Python version found there, and
writes one Markdown file: the machine, the goals of issue 7 with the figures that meet or
miss them, then per Python version the peers' versions, the exact commands and the tables.
``benchmarks/run_peers.sh`` runs it; the file is never edited by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PYPROBES_CORE", "python")  # only reads JSON: no core needed
import bench_peers
import bench_tracer
import benchlib
from benchlib import ROOT, Stat, fmt

PEER_TOOLS = bench_peers.PEER_TOOLS
LABEL = bench_peers.TOOL_LABELS


# --- goals ------------------------------------------------------------------------------------


def _best_peer_p1(rs: dict[str, Any], task: str) -> tuple[str, Stat] | None:
    best: tuple[str, Stat] | None = None
    for tool in PEER_TOOLS:
        st = bench_peers.p1_stats(rs, task, tool)
        if st is not None and (best is None or st[0].median < best[1].median):
            best = (tool, st[0])
    return best


def _best_pyprobes_p1(rs: dict[str, Any], task: str) -> tuple[str, Stat] | None:
    best: tuple[str, Stat] | None = None
    for tool in bench_peers.PYPROBES_TOOLS:
        if tool not in bench_peers.TOOLS_FOR_TASK[task] or tool == "pyprobes-k0":
            continue  # the goals are about handlers doing the work (k0 has none)
        st = bench_peers.p1_stats(rs, task, tool)
        if st is not None and (best is None or st[0].median < best[1].median):
            best = (tool, st[0])
    return best


def goal_fastest_p1(data: dict[str, Any], task: str) -> str:
    rs = data["main"]
    mine, peer = _best_pyprobes_p1(rs, task), _best_peer_p1(rs, task)
    if mine is None or peer is None:
        return "n/a"
    m, p = mine[1].median, peer[1].median
    what = f"{LABEL[mine[0]]} {fmt(m, 'ns')} ns vs {LABEL[peer[0]]} {fmt(p, 'ns')} ns"
    if m <= p:
        return f"**met** ({what})"
    return f"**missed by {m / p:.2f}x** ({what})"


def _noise(rs: dict[str, Any]) -> float:
    st = bench_peers.p2_stat(rs, "", "none")
    if st is None:
        return 0.0
    return abs(st.median) + (st.q3 - st.q1) / 2


def goal_fastest_p2(data: dict[str, Any], col: str) -> str:
    rs = data["main"]
    mine = bench_peers.p2_stat(rs, col, "pyprobes-r")
    best: tuple[str, Stat] | None = None
    for tool in PEER_TOOLS:
        st = bench_peers.p2_stat(rs, col, tool)
        if st is not None and (best is None or st.median < best[1].median):
            best = (tool, st)
    if mine is None or best is None:
        return "n/a"
    noise = _noise(rs)
    m, p = mine.median, best[1].median
    what = f"Kretprobe {fmt(m, '%')} vs {LABEL[best[0]]} {fmt(p, '%')}"
    if m <= p:
        return f"**met** ({what})"
    if m - p <= noise:
        return f"**tie within noise** (±{noise:.1f} %; {what})"
    return f"**missed by {m - p:.1f} points** ({what}; noise ±{noise:.1f} %)"


def _core_sets(data: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(C-core result set or None, python-core result set or None)."""
    main = data["main"]
    if main["core"] == "c":
        return main, data.get("python_core")
    return None, main


def _ratio_text(st: Stat | None, limit: float) -> str:
    if st is None:
        return "n/a"
    verdict = "met" if st.median <= limit else f"missed by {st.median / limit:.2f}x"
    return f"{fmt(st.median, 'x')} ({verdict})"


def goal_native(data: dict[str, Any], which: str) -> str:
    c_set, py_set = _core_sets(data)

    def one(rs: dict[str, Any]) -> str:
        if which == "kprobe":
            st = bench_peers.p1_stats(rs, "count", "pyprobes-k")
            text = _ratio_text(st[1] if st else None, 1.0)
            st0 = bench_peers.p1_stats(rs, "count", "pyprobes-k0")
            if st0 is not None:
                text += f" (without a handler: {fmt(st0[1].median, 'x')})"
            return text
        if which == "kretprobe":
            st = bench_peers.p1_stats(rs, "ret", "pyprobes-r")
            return _ratio_text(st[1] if st else None, 1.2)
        st2 = bench_peers.p1_ratio(rs, ("count", "pyprobes-r"), ("count", "pyprobes-k"))
        return _ratio_text(st2, 1.5)

    c_text = f"c core: **{one(c_set)}**" if c_set else f"c core: {data.get('c_core', 'n/a')}"
    py_text = f"python core: {one(py_set)}" if py_set else "python core: not measured"
    return f"{c_text}; {py_text}"


def goal_workload(data: dict[str, Any], col: str, limit: float) -> str:
    parts = []
    c_set, py_set = _core_sets(data)
    for name, rs in (("c", c_set), ("python", py_set)):
        if rs is None:
            continue
        for tool, what in (("pyprobes-r", "Kretprobe"), ("pyprobes-k", "Kprobe")):
            st = bench_peers.p2_stat(rs, col, tool)
            if st is None:
                continue
            ok = "met" if st.median < limit else "missed"
            parts.append(f"{what} ({name}) {fmt(st.median, '%')} {ok}")
    noise = _noise(data["main"])
    return "; ".join(parts) + f" (noise ±{noise:.1f} %)" if parts else "n/a"


def goal_tracer(tdata: dict[str, Any] | None) -> tuple[str, str]:
    if tdata is None:
        return "n/a", "n/a"
    lost = []
    slow = []
    for key, v in tdata["variants"].items():
        if key == "plain":
            continue
        st = bench_tracer.stats(tdata, key)
        assert st is not None
        core = key.split("-", 1)[1]
        lost.append(
            f"{core} core: max {max(v['lost'])} lost ({'met' if max(v['lost']) == 0 else 'missed'})"
        )
        slow.append(
            f"{core} core {fmt(st['wall_pct'].median, '%')}, {st['eps'].median:,.0f} events/s"
        )
    return "; ".join(slow), "; ".join(lost)


def goals_table(runs: list[tuple[str, dict[str, Any], dict[str, Any] | None]]) -> str:
    rows: list[list[str]] = []
    names = [
        ("1 (a) pyprobes fastest but the floor: count", lambda d, t: goal_fastest_p1(d, "count")),
        ("1 (b) ... capture arguments", lambda d, t: goal_fastest_p1(d, "args")),
        ("1 (c) ... duration + retval", lambda d, t: goal_fastest_p1(d, "ret")),
        ("2 ... never-called function probed", lambda d, t: goal_fastest_p2(d, "never")),
        ("2 ... rarely-called function probed", lambda d, t: goal_fastest_p2(d, "rare")),
        (
            "3 ... every function of a module (in-process, part 2)",
            lambda d, t: goal_fastest_p2(d, "module"),
        ),
        ("3 `pyprobes run` slowdown, events/s (no peer runs it)", lambda d, t: goal_tracer(t)[0]),
        ("3 events lost at the default buffer: 0", lambda d, t: goal_tracer(t)[1]),
        ("kprobe hit at or below the floor (x floor, (a))", lambda d, t: goal_native(d, "kprobe")),
        ("kretprobe within 1.2x of its floor ((c))", lambda d, t: goal_native(d, "kretprobe")),
        (
            "kretprobe at most 1.5x a kprobe (both counting, (a))",
            lambda d, t: goal_native(d, "kret/kprobe"),
        ),
        (
            "workload, probe on a never-called function: < 1 %",
            lambda d, t: goal_workload(d, "never", 1.0),
        ),
        (
            "workload, probe on a rarely-called function: < 2 %",
            lambda d, t: goal_workload(d, "rare", 2.0),
        ),
    ]
    for title, fn in names:
        rows.append([title, *(fn(d, t) for _, d, t in runs)])
    headers = ["goal", *(f"CPython {v}" for v, _, _ in runs)]
    return benchlib.md_table(headers, rows)


# --- the file -------------------------------------------------------------------------------------


def version_section(ver: str, data: dict[str, Any], tdata: dict[str, Any] | None) -> str:
    main = data["main"]
    f = main["facts"]
    peers = ", ".join(
        f"{name} {p['version'] or '(not installed)'}"
        + ("" if p["available"] else f" — **not available**: {p['reason']}")
        for name, p in main["peers"].items()
    )
    core_line = f"default core `{main['core']}`"
    if main["core"] == "c":
        core_line += (
            "; the python core measured beside it (a child process with `PYPROBES_CORE=python`)"
            if data.get("python_core")
            else "; python core not measured"
        )
    else:
        core_line += f"; c core: {data.get('c_core', 'not built')}"
    lines = [
        f"## CPython {f['python']}",
        "",
        f"- python: `{f['python_full']}` ({f['executable']})",
        f"- pyprobes {f['pyprobes']} ({f['pyprobes_path']}), {core_line}",
        f"- peers: {peers}",
        f"- date {f['date']}; load average before: {f['load_before']};"
        f" parts 1, 2, 4 took {main['seconds']} s"
        + (f", part 3 {tdata['seconds']} s" if tdata else ""),
        f"- command (parts 1, 2, 4): `{data['command']}`",
    ]
    if tdata:
        lines.append(f"- command (part 3): `{tdata['command']}`")
    lines += ["", bench_peers.markdown(data, level=3)]
    if tdata:
        lines += [bench_tracer.markdown(tdata, level=3)]
    return "\n".join(lines)


def load_runs(d: Path) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    runs = []
    for p in sorted(
        d.glob("*-peers.json"), key=lambda p: [int(x) for x in p.name.split("-")[0].split(".")]
    ):
        ver = p.name.split("-")[0]
        t = d / f"{ver}-tracer.json"
        tdata = json.loads(t.read_text()) if t.exists() else None
        runs.append((ver, json.loads(p.read_text()), tdata))
    return runs


def render(runs: list[tuple[str, dict[str, Any], dict[str, Any] | None]], command: str) -> str:
    f = runs[0][1]["main"]["facts"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    uname = " ".join(
        Path("/proc/sys/kernel/" + n).read_text().strip() for n in ("ostype", "osrelease")
    )
    head = [
        "# pyprobes against its peers: overhead results",
        "",
        f"Generated by `{command}`; do not edit by hand. The method is in",
        "[PEERS.md](PEERS.md).",
        "",
        f"- date: {f['date']}",
        f"- machine: {f['machine']}, {f['cpu']}, {f['cpus']} CPUs, {uname}"
        " (a shared VM: other jobs ran beside the benchmark, hence interleaved rounds and"
        " medians)",
        f"- source: commit {commit} (the working tree may hold uncommitted changes)",
        "- interpreters: "
        + ", ".join(f"{v} ({d['main']['facts']['executable']})" for v, d, _ in runs),
        "- environments: `benchmarks/.venv-peers-X.Y`, made by `benchmarks/peers_env.sh` from"
        " `benchmarks/requirements-peers.txt` (pyprobes installed with `pip install -e .`)",
        "",
        "## Goals of issue 7",
        "",
        goals_table(runs),
        "",
        "Where a goal is missed, [PEERS.md](PEERS.md#where-the-time-goes) says where the time goes,"
        " from callgrind profiles.",
        "",
    ]
    body = [version_section(v, d, t) for v, d, t in runs]
    return "\n".join(head + body)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("dir", help="directory of X.Y-peers.json and X.Y-tracer.json")
    ap.add_argument("--out", required=True, help="the Markdown file to write")
    ap.add_argument("--command", default="benchmarks/run_peers.sh", help="what generated it")
    args = ap.parse_args(argv)
    runs = load_runs(Path(args.dir))
    if not runs:
        print(f"error: no *-peers.json in {args.dir}", file=sys.stderr)
        return 1
    text = render(runs, args.command)
    Path(args.out).write_text(text.rstrip() + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
