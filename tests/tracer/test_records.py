"""tracer.records: events that programs record in the core's ring are the Python path's events,
and the C core's JSON Lines are the JSON renderer's, byte for byte."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyprobes
from pyprobes.output import Event, JsonRenderer
from pyprobes.spec import exception_text, parse_spec, render
from pyprobes.tracer import TraceSession
from pyprobes.tracer.records import RingSource

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _rec_targets as targets

T = "_rec_targets"
SPECS = [
    f"r:s {T}:show value n $retval $duration $thread",
    f"p:e {T}:show value n",
    f"p:f {T}:show n if n > 20",
    f"r:g {T}:gen n",
]


def trace(records: RingSource | None) -> tuple[list[Event], TraceSession]:
    seen: list[Event] = []
    session = TraceSession([parse_spec(s) for s in SPECS], seen.append, records=records)
    session.arm()
    try:
        targets.run()
    finally:
        session.stop()
    return seen, session


def untimed(e: Event) -> Event:
    args = {k: (0 if k == "$duration" else v) for k, v in e.args.items()}
    tid = 1 if e.thread_id == threading.get_native_id() else 2  # the worker differs per run
    return dataclasses.replace(
        e, time_ns=0, duration_ns=0 if e.is_return else None, args=args, thread_id=tid
    )


def as_json(e: Event) -> object:
    return JsonRenderer().render(e)


def test_recorded_events_are_the_python_paths() -> None:
    by_python, _ = trace(None)
    source = RingSource()
    direct, session = trace(source)
    assert direct == []  # every spec ran as a program
    assert [p for _, p in session.paths()] == ["program"] * len(SPECS)
    records, lost = source.ring.take()
    assert lost == {}
    recorded = [source.event_of(r) for r in records]
    assert len(recorded) == len(by_python) == 2 * (len(targets.VALUES) + 2) + 6 + 1
    # The same events in the same order (the lines a user reads), timings aside.
    assert [as_json(untimed(e)) for e in recorded] == [as_json(untimed(e)) for e in by_python]


def test_the_c_cores_json_is_the_renderers_byte_for_byte() -> None:
    source = RingSource()
    if pyprobes.core_name() != "c":  # the reference renders records with the renderers
        assert not hasattr(source.ring, "take_json")
        trace(source)
        text, n = source.drain(JsonRenderer())
        assert n == len(text.splitlines()) == 2 * (len(targets.VALUES) + 2) + 6 + 1
        return
    trace(source)
    take_json = source.ring.take_json
    text, counts, lost, kept = take_json(
        source._statics_of(source._probes), os.getpid(), source._fallback, keep=True
    )
    expected = "".join(JsonRenderer().render(source.event_of(r)) for r in kept)
    assert text == expected
    assert sum(counts.values()) == len(kept) and lost == {}
    for line in text.splitlines():
        json.loads(line)  # strict JSON


def test_a_full_ring_counts_each_lost_record_for_its_probe() -> None:
    ring = pyprobes.record_ring(5, render, exception_text)
    source = RingSource()
    source.ring = ring
    trace(source)
    records, lost = ring.take()
    assert len(records) == 5
    hits = 2 * (len(targets.VALUES) + 2) + 6 + 1
    assert len(records) + sum(lost.values()) == hits
    by_probe: dict[int, int] = {}
    for r in records:
        by_probe[r[0]] = by_probe.get(r[0], 0) + 1
    # what each probe lost and kept adds up to its own hits
    assert by_probe.get(0, 0) + lost.get(0, 0) == len(targets.VALUES) + 2


def test_pyprobes_run_writes_json_events_from_the_ring(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(
        "def work(a, b):\n    return a + b\n\n"
        "for i in range(50000):\n    work(i, 2)\nprint('done')\n"
    )
    out = tmp_path / "events.json"
    cmd = [sys.executable, "-m", "pyprobes", "run", "-e", "r:w __main__:work a b $retval"]
    cmd += ["--format", "json", "-o", str(out), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    lines = out.read_text().splitlines()
    assert len(lines) == 50000
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["args"] == {"a": 0, "b": 2, "$retval": 2} and first["retval"] == 2
    assert last["args"]["a"] == 49999 and last["site"] == "__main__:<module>:5"
    assert "0 events lost" in proc.stderr
