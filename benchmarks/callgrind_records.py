"""Instructions per call of event records (issue 13.3), counted by callgrind, beside viztracer.

``python benchmarks/callgrind_records.py [--calls 20000] [--md FILE]`` runs, for each variant,
a child under ``valgrind --tool=callgrind`` three times: no calls, ``--calls`` calls of
``work(a, b)`` (a module's function), and the same calls followed by writing the events out;
it prints the instructions one call adds (over the plain loop) and those writing one event
takes. Unlike the timings of ``bench_cli.py``, the counts do not move with the machine's load;
they are not time (cache misses are not counted), and the writing of pyprobes' records runs
mostly with the GIL released, on the writer's thread, where viztracer's runs at exit.

Variants: the plain loop; the engine's floor (a Kretprobe with an empty Python handler); a
``TraceSession`` writing events from the core's ring, as ``pyprobes run`` does, as JSON and
as text, with and without fetch args; viztracer (when installed) recording every call and
saving its JSON at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib
from benchlib import ROOT

TARGET = "def work(a, b):\n    return a + b\n"

CHILD = """\
import os, sys
sys.path.insert(0, sys.argv[4])
from cg_target import work
N, SPEC, FMT, WRITE = int(sys.argv[1]), sys.argv[2], sys.argv[3], os.environ["CG_WRITE"] == "1"
done = None
if SPEC == "floor":
    import pyprobes
    k = pyprobes.Kretprobe(addr=work, handler=lambda ri, ctx: None)
    pyprobes.register_kretprobe(k)
    done = lambda: pyprobes.unregister_kretprobe(k)
elif SPEC == "viztracer":
    from viztracer import VizTracer
    viz = VizTracer(output_file=os.path.join(sys.argv[4], "viz.json"), verbose=0,
                    tracer_entries=max(N * 4, 1000))
    viz.start()
    def done():
        viz.stop()
        if WRITE:
            viz.save()
elif SPEC != "plain":
    from pyprobes.output import JsonRenderer, TextRenderer
    from pyprobes.lang import parse_spec
    from pyprobes.tracer import TraceSession
    from pyprobes.tracer.records import RingSource
    src = RingSource(capacity=max(N, 16))
    s = TraceSession([parse_spec(SPEC)], lambda e: None, records=src, events=True)
    s.arm()
    def done():
        s.stop()
        if WRITE:
            src.drain(JsonRenderer() if FMT == "json" else TextRenderer())
for i in range(N):
    work(i, 2)
if done is not None:
    done()
"""

VARIANTS = [
    ("plain", "plain", "-", "plain loop (absolute instructions per call)"),
    ("floor", "floor", "-", "engine floor: Kretprobe, empty Python handler"),
    ("r-json", "r:w cg_target:work", "json", "r:w work, JSON from the ring"),
    ("r-json-args", "r:w cg_target:work a b $retval", "json", "r:w work a b $retval, JSON"),
    ("r-text-args", "r:w cg_target:work a b $duration", "text", "r:w work a b $duration, text"),
    ("viztracer", "viztracer", "-", "viztracer, every call (saved at exit)"),
]

_REFS = re.compile(r"refs:\s+([\d,]+)")


def count(child: Path, tmp: Path, calls: int, spec: str, fmt: str, write: bool) -> int:
    """Instructions of one child run under callgrind."""
    env = {**os.environ, "CG_WRITE": "1" if write else "0"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(benchlib.SRC), env.get("PYTHONPATH")]))
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv += [sys.executable, str(child), str(calls), spec, fmt, str(tmp)]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    m = _REFS.search(p.stderr)
    if p.returncode != 0 or m is None:
        raise SystemExit(f"{spec}: valgrind failed ({p.returncode}): {p.stderr[-1500:]}")
    return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--md", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    have_viz = (
        subprocess.run(
            [sys.executable, "-c", "import viztracer"], capture_output=True, check=False
        ).returncode
        == 0
    )
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="pyprobes-cg-records-") as t:
        tmp = Path(t)
        (tmp / "cg_target.py").write_text(TARGET)
        child = tmp / "child.py"
        child.write_text(CHILD)
        n = args.calls
        base = floor = 0.0
        for key, spec, fmt, label in VARIANTS:
            if key == "viztracer" and not have_viz:
                rows.append([label, "not installed", "", ""])
                continue
            none = count(child, tmp, 0, spec, fmt, False)
            hit = (count(child, tmp, n, spec, fmt, False) - none) / n
            if key == "plain":
                base = hit
                rows.append([label, f"{hit:,.0f}", "", ""])
                continue
            added = hit - base
            if key == "floor":
                floor = added
                rows.append([label, f"{added:,.0f}", "1.00x", ""])
                continue
            wrote = (count(child, tmp, n, spec, fmt, True) - none) / n - hit
            rows.append([label, f"{added:,.0f}", f"{added / floor:.2f}x", f"{wrote:,.0f}"])
    headers = ["variant", "instructions added per call", "x the floor", "writing one event"]
    title = f"CPython {sys.version.split()[0]}, {args.calls:,} calls, callgrind"
    print(title)
    print(benchlib.text_table(headers, rows))
    if args.md is not None:
        args.md.write_text(f"{title}\n\n{benchlib.md_table(headers, rows)}\n")


if __name__ == "__main__":
    main()
