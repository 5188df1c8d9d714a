"""tracer.records: events that programs record in the core's ring are the Python path's events,
and the C core's JSON Lines are the JSON renderer's, byte for byte."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyprobes
from pyprobes.lang import exception_text, parse_spec, render
from pyprobes.output import ChromeRenderer, Event, JsonRenderer, TextRenderer
from pyprobes.output.units import format_duration
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
#: Fetch paths and $exception, recorded as the Python path captures them.
PATH_SPECS = [f"r:x {T}:show first=value[0] k=value['k'] imag=value.imag $exception"]


def trace(records: RingSource | None, specs: list[str] = SPECS) -> tuple[list[Event], TraceSession]:
    seen: list[Event] = []
    session = TraceSession([parse_spec(s) for s in specs], seen.append, records=records)
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
    assert len(recorded) == len(by_python) == targets.HITS
    # The same events in the same order (the lines a user reads), timings aside.
    assert [as_json(untimed(e)) for e in recorded] == [as_json(untimed(e)) for e in by_python]


def test_recorded_paths_and_exceptions_are_the_python_paths() -> None:
    by_python, _ = trace(None, PATH_SPECS)
    source = RingSource()
    direct, session = trace(source, PATH_SPECS)
    assert direct == []
    assert [p for _, p in session.paths()] == ["program"] * len(PATH_SPECS)
    records, lost = source.ring.take()
    assert lost == {}
    recorded = [source.event_of(r) for r in records]
    assert len(recorded) == len(by_python) == targets.SHOWS
    assert any(e.args["first"] not in ("(fault)", None) for e in recorded)  # some were read
    assert [as_json(untimed(e)) for e in recorded] == [as_json(untimed(e)) for e in by_python]


def test_the_c_cores_json_is_the_renderers_byte_for_byte() -> None:
    source = RingSource()
    if pyprobes.core_name() != "c":  # the reference renders records with the renderers
        assert not hasattr(source.ring, "take_json")
        trace(source)
        text, counts = source.drain(JsonRenderer())
        assert isinstance(text, str)
        assert sum(counts.values()) == len(text.splitlines()) == targets.HITS
        f_hits = len(targets.VALUES) - 21
        assert counts == {"s": targets.SHOWS, "e": targets.SHOWS, "f": f_hits, "g": 1}
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
    hits = targets.HITS
    assert len(records) + sum(lost.values()) == hits
    by_probe: dict[int, int] = {}
    for r in records:
        by_probe[r[0]] = by_probe.get(r[0], 0) + 1
    # what each probe lost and kept adds up to its own hits
    assert by_probe.get(0, 0) + lost.get(0, 0) == targets.SHOWS


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


def test_records_past_a_chunk_keep_their_order_and_fallbacks_in_place() -> None:
    """Thousands of records (several of take_json's chunks), a fallback in every one."""
    source = RingSource()
    session = TraceSession([parse_spec(s) for s in SPECS], lambda e: None, records=source)
    session.arm()
    try:
        for _ in range(100):
            targets.run()
    finally:
        session.stop()
    if pyprobes.core_name() != "c":
        assert not hasattr(source.ring, "take_json")
        return
    data, _, lost, kept = source.ring.take_json(
        source._statics_of(source._probes), os.getpid(), source._fallback, keep=True, utf8=True
    )
    assert len(kept) == 100 * targets.HITS > 3 * 2048
    # (as UTF-8 bytes, for a file opened as UTF-8)
    assert data == "".join(JsonRenderer().render(source.event_of(r)) for r in kept).encode()
    assert lost == {}


def _fill(source: RingSource, calls: int) -> None:
    session = TraceSession(
        [parse_spec(f"r:s {T}:show value n $retval")], lambda e: None, records=source
    )
    session.arm()
    try:
        for i in range(calls):
            targets.show(i, i)
    finally:
        session.stop()


def test_the_c_core_renders_json_with_the_gil_released() -> None:
    """Another thread runs while take_json writes; with a switch interval this long, only a
    release of the GIL lets it (it gives the GIL back at each sleep(0))."""
    source = RingSource()
    _fill(source, 30_000)
    if pyprobes.core_name() != "c":
        assert not hasattr(source.ring, "take_json")
        return
    ticks = [0]
    stop = threading.Event()
    started = threading.Event()

    def tick() -> None:
        started.set()
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0)

    statics = source._statics_of(source._probes)
    old = sys.getswitchinterval()
    t = threading.Thread(target=tick)
    t.start()
    started.wait()
    sys.setswitchinterval(1000.0)
    try:
        before = ticks[0]
        text, counts, _, _ = source.ring.take_json(statics, os.getpid(), source._fallback)
        during = ticks[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
        t.join()
    assert sum(counts.values()) == len(text.splitlines()) == 30_000
    assert during > 0


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_while_the_records_are_being_rendered_leaves_the_child_a_working_ring() -> None:
    """The child of a fork made while a reader holds a buffer (here: from the fallback, in the
    middle of take_json) records and reads again after clear_after_fork."""
    source = RingSource()
    _fill(source, 10)
    if pyprobes.core_name() != "c":
        assert not hasattr(source.ring, "take_json")
        return
    ring = source.ring
    statics = source._statics_of(source._probes)
    children: list[int] = []

    def fork_once(rec: tuple[object, ...]) -> str:
        if not children:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ring.clear_after_fork()
                    _fill(source, 3)
                    records, _ = ring.take()
                    # the child's own thread id (a thread state's, set again after the fork)
                    tids = {r[3] for r in records}
                    code = 0 if len(records) == 3 and tids == {threading.get_native_id()} else 2
                finally:
                    os._exit(code)
            children.append(pid)
        return source._fallback(rec)

    # a value the fast path cannot spell: its record goes to the fallback
    session = TraceSession(
        [parse_spec(f"r:s {T}:show value n $retval")], lambda e: None, records=source
    )
    session.arm()
    try:
        targets.show("café", 1)
    finally:
        session.stop()
    _, counts, _, _ = ring.take_json(statics, os.getpid(), fork_once)
    assert sum(counts.values()) == 11
    _, status = os.waitpid(children[0], 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_c_cores_text_is_the_renderers_byte_for_byte() -> None:
    """Every kind of value, exceptions, $duration, odd thread names: the Python text lines."""
    specs = [*SPECS, f"r:x {T}:show n $duration", f"r:t {T}:show $retval n"]
    source = RingSource()
    session = TraceSession([parse_spec(s) for s in specs], lambda e: None, records=source)
    session.arm()
    try:
        targets.run()
    finally:
        session.stop()
    if pyprobes.core_name() != "c":
        assert not hasattr(source.ring, "take_text")
        return
    statics = source._text_statics_of(source._probes)
    fell: list[object] = []

    def fallback(rec: tuple[object, ...]) -> str:
        fell.append(rec)
        return source._text_fallback(rec)

    text, counts, _, kept = source.ring.take_text(statics, os.getpid(), fallback, keep=True)
    # only what the fast path cannot spell (non-ASCII text, containers, objects...) fell back
    assert 0 < len(fell) < len(kept) // 2
    assert len(kept) == sum(counts.values()) == targets.HITS + 2 * targets.SHOWS
    expected = [TextRenderer().render(source.event_of(r)) for r in kept]
    assert text.splitlines(keepends=True) == expected
    # the cases are there: a return that raised, durations
    assert sum(" raised=ValueError" in line and "$retval" not in line for line in expected) == 3
    assert sum("$duration=" in line for line in expected) == 2 * targets.SHOWS


def _chrome_state(r: ChromeRenderer) -> tuple[object, ...]:
    return (r._first, r._async_ids, r._thread_names, r._tids)


def test_the_c_cores_chrome_is_the_renderers_byte_for_byte() -> None:
    """Slices, instants, async slices, exceptions, a renamed thread, fetch args named as the
    event's own args, records the fallback renders (the first one too), over two takes: the
    ChromeRenderer's text, and its state after."""
    specs = [*SPECS, f"r:c {T}:show event=n retval=value exception=n"]
    source = RingSource()
    main = threading.current_thread()
    name = main.name
    if pyprobes.core_name() != "c":
        assert not hasattr(source.ring, "take_chrome") and not RingSource.takes("chrome")
        return
    mine, reference = ChromeRenderer(), ChromeRenderer()
    texts, kept_all = [], []
    for round_ in range(2):
        fell: list[object] = []

        def fallback(rec: tuple[object, ...], fell: list[object] = fell) -> str:
            fell.append(rec)
            return mine.render(source.event_of(rec))

        session = TraceSession([parse_spec(s) for s in specs], lambda e: None, records=source)
        session.arm()
        try:
            targets.show("café", 1)  # a record the fallback renders, first of the trace
            targets.run()
            main.name = f"renamed {round_}"
            targets.show(1, 2)
        finally:
            main.name = name
            session.stop()
        text, counts, lost, kept = source.ring.take_chrome(
            source._chrome_statics_of(source._probes), os.getpid(), mine, fallback, keep=True
        )
        assert 0 < len(fell) < len(kept) // 2 and lost == {}
        assert sum(counts.values()) == len(kept)
        texts.append(text)
        kept_all.extend(kept)
    expected = "".join(reference.render(source.event_of(r)) for r in kept_all)
    assert "".join(texts) == expected
    assert _chrome_state(mine) == _chrome_state(reference)
    events = json.loads(mine.header() + expected + mine.footer())
    phases = {e["ph"] for e in events}
    assert phases == {"M", "X", "i", "b", "e"}
    names = [e["args"]["name"] for e in events if e["ph"] == "M"]
    assert "renamed 0" in names and "renamed 1" in names and "wörker\n1" in names


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.integers(-(2**63) + 1, 2**63 - 1), st.integers(-(10**16), 10**16)))
def test_the_c_cores_chrome_micros_are_int_true_division(ns: int) -> None:
    """(A pure function of the C module, whichever core runs.)"""
    from pyprobes import _speedups

    assert _speedups.chrome_micros(ns) == ns / 1000
    for edge in (2**53 - 1, 2**53, 2**53 + 1, 2**62 + 500, 2**63 - 1, 9007199254740993500):
        assert _speedups.chrome_micros(edge) == edge / 1000


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(10**12), 10**12)))
def test_the_c_cores_numbers_in_text_are_format_durations_and_seconds(ns: int) -> None:
    """(A pure function of the C module, whichever core runs.)"""
    from pyprobes import _speedups

    assert _speedups.text_numbers(ns) == (format_duration(ns), f"{ns / 1e9:.6f}")


def test_pyprobes_run_writes_text_events_from_the_ring(tmp_path: Path) -> None:
    script = tmp_path / "prog.py"
    script.write_text(
        "import threading\n"
        "def work(a, b):\n    return b * a\n\n"
        "threading.current_thread().name = 'main\\tthread'\n"
        "for i in range(30000):\n    work(i, 'x')\nprint('done')\n"
    )
    out = tmp_path / "events.txt"
    cmd = [sys.executable, "-m", "pyprobes", "run", "-e", "r:w __main__:work a b $duration"]
    cmd += ["-o", str(out), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    lines = out.read_text().splitlines()
    assert len(lines) == 30000
    first = lines[0]
    assert first.startswith("main\\tthread-")  # a tab in a name is escaped
    assert ": w: (__main__:<module>:7 <- __main__:work) a=0 b='x' $duration=" in first
    assert lines[-1].split(") ", 1)[1].startswith("a=29999 b='x' $duration=")
    assert "0 events lost" in proc.stderr


def _linked_returns(link_key: str | None, entry: Any) -> list[tuple[object, ...]]:
    """The records of ``r`` probes on targets.show whose entry handler is ``entry``."""
    from pyprobes import Kretprobe
    from pyprobes.engine.program import Program, Var

    ring = pyprobes.record_ring(1000, render, exception_text, None, link_key)
    handler = pyprobes.program_handler(
        Program(fields=(Var("local", "n"),)), ring=ring, probe=ring.add_probe()
    )
    rp = Kretprobe(addr=targets.show, handler=handler, entry_handler=entry)  # type: ignore[arg-type]
    pyprobes.register_kretprobe(rp)
    try:
        targets.show([1], 7)
        targets.show([2], 8)
    finally:
        pyprobes.unregister_kretprobe(rp)
    records, lost = ring.take()
    assert lost == {} and len(records) == 2
    return list(records)


def test_a_rings_link_key_gives_each_return_what_its_entry_left_in_ri_data() -> None:
    def entry(ri: object, ctx: object) -> None:
        ri.data["pyprobes.activation"] = ("link", ctx.args["n"])  # type: ignore[attr-defined]
        ri.data["other"] = "not this"  # type: ignore[attr-defined]

    records = _linked_returns("pyprobes.activation", entry)
    assert [(r[5], r[12]) for r in records] == [((7,), ("link", 7)), ((8,), ("link", 8))]
    # without a key nothing is linked; with one that the entry did not set, None
    assert [r[12] for r in _linked_returns(None, entry)] == [None, None]
    assert [r[12] for r in _linked_returns("absent", lambda ri, ctx: None)] == [None, None]


def test_a_rings_link_key_is_a_str() -> None:
    with pytest.raises(TypeError, match="link_key is a str"):
        pyprobes.record_ring(10, render, exception_text, None, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize("write", [False, True])
def test_with_spans_every_return_is_a_span_or_counted_lost(write: bool) -> None:
    spans: list[Event] = []
    lost: list[int] = []
    source = RingSource(spans=spans.append, spans_lost=lost.append, write=write)
    source.ring = pyprobes.record_ring(7, render, exception_text, None, "pyprobes.activation")
    session = TraceSession([parse_spec(s) for s in SPECS], spans.append, records=source, spans=True)
    session.arm()
    try:
        targets.run()
    finally:
        session.stop()
    text, counts = source.drain(JsonRenderer())
    returns = targets.SHOWS + 1  # r:s and r:g
    assert spans and all(e.is_return and e.activation is not None for e in spans)
    assert len(spans) + sum(lost) == returns
    written = text.decode() if isinstance(text, bytes) else text
    if write:  # the records kept are written, with their activations
        assert sum(counts.values()) == len(written.splitlines()) == 7
        assert sum('"activation":' in line for line in written.splitlines()) == len(spans)
    else:
        assert written == "" and counts == {}


def _json_of_session(spans: bool) -> tuple[str, list[tuple[object, ...]], int]:
    """Run SPECS into a ring (with activation links when ``spans``); its C JSON, the records
    and how many of them the C writer left to the fallback."""
    seen: list[Event] = []
    source = RingSource(spans=seen.append) if spans else RingSource()
    session = TraceSession([parse_spec(s) for s in SPECS], seen.append, records=source, spans=spans)
    session.arm()
    try:
        targets.run()
    finally:
        session.stop()
    fallen: list[tuple[object, ...]] = []

    def fallback(rec: tuple[object, ...]) -> str:
        fallen.append(rec)
        return source._fallback(rec)

    text, _, lost, kept = source.ring.take_json(
        source._statics_of(source._probes), os.getpid(), fallback, keep=True
    )
    assert lost == {}
    assert text == "".join(JsonRenderer().render(source.event_of(r)) for r in kept)
    return text, kept, len(fallen)


def test_the_c_cores_json_of_linked_records_is_the_renderers_byte_for_byte() -> None:
    if pyprobes.core_name() != "c":  # the reference renders every record with the renderer
        seen: list[Event] = []
        source = RingSource(spans=seen.append)
        assert not hasattr(source.ring, "take_json")
        session = TraceSession([parse_spec(s) for s in SPECS], seen.append, records=source,
                               spans=True)  # fmt: skip
        session.arm()
        try:
            targets.run()
        finally:
            session.stop()
        data, _ = source.drain(JsonRenderer())
        lines = [json.loads(line) for line in str(data).splitlines()]
        returns = [d for d in lines if d["kind"] == "r"]
        assert len(returns) == targets.SHOWS + 1 and all("activation" in d for d in returns)
        return
    text, kept, fallen = _json_of_session(spans=True)
    assert len([r for r in kept if r[12] is not None]) == targets.SHOWS + 1
    returns = [json.loads(line) for line in text.splitlines() if '"kind":"r"' in line]
    assert len(returns) == targets.SHOWS + 1 and all("activation" in d for d in returns)
    # the links are written in C: no more records fall back than without them
    assert fallen == _json_of_session(spans=False)[2]
