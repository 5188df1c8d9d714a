"""EventWriter: emit never blocks or raises, order is kept, every event is written or lost."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import pytest
from output_helpers import make_event

from pyprobes.output import (
    WRITER_THREAD_NAME,
    ChromeRenderer,
    Event,
    EventWriter,
    FileSink,
    JsonRenderer,
    StreamSink,
    TextRenderer,
)

WAIT = 10.0  # generous upper bound for a synchronisation wait; tests never sleep


def _event(i: int, name: str = "e", thread: str = "MainThread") -> Event:
    return make_event(args={"i": i}, event=name, time_ns=i, thread_name=thread)


class GatedStream:
    """A stream whose write() announces itself, then waits until the test opens the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.entered.set()
        if not self.gate.wait(WAIT):
            raise AssertionError("the test never opened the gate")
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass


class FailingStream:
    """A stream that fails every write as a closed pipe does."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def _indices(text: str) -> list[int]:
    return [json.loads(line)["args"]["i"] for line in text.splitlines()]


def _run_bounded(fn: object) -> None:
    """Run fn on a thread and fail (instead of hanging) if it does not return promptly."""
    assert callable(fn)
    done = threading.Event()

    def target() -> None:
        fn()
        done.set()

    threading.Thread(target=target, daemon=True).start()
    assert done.wait(WAIT), "emit() blocked"


def test_events_arrive_in_order() -> None:
    stream = io.StringIO()
    writer = EventWriter(JsonRenderer(), StreamSink(stream))
    for i in range(5000):
        writer.emit(_event(i))
    assert writer.close()
    assert _indices(stream.getvalue()) == list(range(5000))
    assert (writer.written, writer.lost, writer.pending) == (5000, 0, 0)


def test_writer_runs_on_a_named_daemon_thread() -> None:
    writer = EventWriter(TextRenderer(), StreamSink(io.StringIO()))
    assert writer.thread.name == WRITER_THREAD_NAME == "pyprobes-writer"
    assert writer.thread.daemon and writer.thread.is_alive()
    assert writer.close()
    assert not writer.thread.is_alive() and writer.closed


def test_blocked_sink_never_blocks_emit_and_counts_what_did_not_fit() -> None:
    stream = GatedStream()
    capacity, n = 100, 10_000
    writer = EventWriter(JsonRenderer(), StreamSink(stream), capacity=capacity)
    writer.emit(_event(0))
    assert stream.entered.wait(WAIT)  # the writer thread is now stuck writing event 0

    def flood() -> None:
        for i in range(1, n + 1):
            writer.emit(_event(i))

    _run_bounded(flood)
    assert writer.lost == n - capacity
    assert writer.lost_by_event() == {"e": n - capacity}
    assert writer.pending == capacity
    stream.gate.set()
    assert writer.close(timeout=WAIT)
    assert writer.written + writer.lost == n + 1
    assert _indices("".join(stream.parts)) == list(range(capacity + 1))


def test_many_producers_every_event_written_or_lost_and_order_per_thread() -> None:
    stream = GatedStream()
    writer = EventWriter(JsonRenderer(), StreamSink(stream), capacity=500)
    writer.emit(_event(-1, name="first"))
    assert stream.entered.wait(WAIT)
    per_thread = 3_000

    def produce(t: int) -> None:
        for i in range(per_thread):
            writer.emit(_event(t * per_thread + i, name=f"t{t}"))

    def flood() -> None:
        threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    _run_bounded(flood)
    stream.gate.set()
    assert writer.close(timeout=WAIT)
    assert writer.written + writer.lost == 1 + 4 * per_thread
    assert writer.lost > 0
    seen = _indices("".join(stream.parts))
    assert len(seen) == writer.written
    for t in range(4):
        mine = [i for i in seen if t * per_thread <= i < (t + 1) * per_thread]
        assert mine == sorted(mine)
    lost = writer.lost_by_event()
    assert sum(lost.values()) == writer.lost
    for t in range(4):
        written_t = sum(1 for i in seen if t * per_thread <= i < (t + 1) * per_thread)
        assert written_t + lost.get(f"t{t}", 0) == per_thread


def test_close_is_idempotent_and_writes_the_footer_once(tmp_path: Path) -> None:
    path = tmp_path / "trace.json"
    writer = EventWriter(ChromeRenderer(), FileSink(path))
    writer.emit(_event(1))
    assert writer.close()
    assert writer.close()
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert [e["ph"] for e in doc] == ["M", "i"]


def test_chrome_file_with_no_events_is_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    assert EventWriter(ChromeRenderer(), FileSink(path)).close()
    assert json.loads(path.read_text(encoding="utf-8")) == []


def test_emit_after_close_is_counted_lost_not_raised() -> None:
    writer = EventWriter(TextRenderer(), StreamSink(io.StringIO()))
    writer.emit(_event(0))
    assert writer.close()
    writer.emit(_event(1))
    writer.emit(_event(2))
    assert (writer.written, writer.lost) == (1, 2)


def test_closed_file_does_not_propagate(tmp_path: Path) -> None:
    f = (tmp_path / "x.txt").open("w")
    f.close()
    writer = EventWriter(TextRenderer(), StreamSink(f))
    writer.emit(_event(0))
    assert writer.close() is False
    assert isinstance(writer.error, ValueError)
    assert (writer.written, writer.lost) == (0, 1)


def test_broken_pipe_stops_writing_and_later_emits_are_lost() -> None:
    stream = FailingStream()
    writer = EventWriter(TextRenderer(), StreamSink(stream))
    writer.emit(_event(0))
    writer.thread.join(WAIT)  # the writer thread stops at the first failed write
    assert not writer.thread.is_alive()
    assert isinstance(writer.error, BrokenPipeError)
    for i in range(1, 11):
        writer.emit(_event(i))  # must not raise
    assert stream.writes == 1
    assert writer.close() is False
    assert (writer.written, writer.lost) == (0, 11)


def test_a_renderer_that_raises_loses_that_event_only() -> None:
    class Picky(TextRenderer):
        def render(self, event: Event) -> str:
            if event.time_ns == 1:
                raise RuntimeError("bug")
            return super().render(event)

    stream = io.StringIO()
    writer = EventWriter(Picky(), StreamSink(stream))
    for i in range(3):
        writer.emit(_event(i))
    assert writer.close()
    assert (writer.written, writer.lost, writer.render_errors) == (2, 1, 1)
    assert len(stream.getvalue().splitlines()) == 2


def test_close_times_out_on_a_stuck_sink_then_accounts_for_everything() -> None:
    stream = GatedStream()
    writer = EventWriter(JsonRenderer(), StreamSink(stream), capacity=50)
    writer.emit(_event(0))
    assert stream.entered.wait(WAIT)
    for i in range(1, 31):
        writer.emit(_event(i))
    assert writer.close(timeout=0.05) is False  # still stuck in write()
    stream.gate.set()
    writer.thread.join(WAIT)
    assert not writer.thread.is_alive()
    # The write in flight completed; what was queued behind it is lost, none pending.
    assert (writer.written, writer.lost, writer.pending) == (1, 30, 0)


def test_bad_capacity_is_rejected() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventWriter(TextRenderer(), StreamSink(io.StringIO()), capacity=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forked_child_never_blocks_and_writes_nothing() -> None:
    stream = io.StringIO()
    writer = EventWriter(TextRenderer(), StreamSink(stream))
    writer.emit(_event(0))
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        code = 1
        try:
            for i in range(10):
                writer.emit(_event(i))
            ok = writer.closed and writer.lost == 10 and writer.written == 0
            ok = ok and writer.close(timeout=1) is False
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert writer.close()
    assert writer.written == 1
    assert stream.getvalue().count("\n") == 1


def test_emit_survives_garbage() -> None:
    writer = EventWriter(TextRenderer(), StreamSink(io.StringIO()), capacity=1)
    writer.close()
    writer.emit(None)  # type: ignore[arg-type]
    assert writer.lost == 1


class BytesSource:
    """A record source whose text comes as UTF-8 bytes, as the C core's JSON does."""

    def __init__(self, data: bytes, n: int) -> None:
        self.pending = [(data, {"caf\u00e9": n})]

    def drain(self, renderer: object) -> tuple[bytes, dict[str, int]]:
        return self.pending.pop() if self.pending else (b"", {})

    def lost_by_event(self) -> dict[str, int]:
        return {}


def test_utf8_bytes_from_a_source_land_after_the_text_before_them(tmp_path: Path) -> None:
    """Into a file as they are, after the events written as text; into a stream decoded."""
    line = '{"event":"caf\u00e9"}\n'
    path = tmp_path / "out.json"
    w = EventWriter(JsonRenderer(), FileSink(path))
    w.emit(_event(0))
    w.close(timeout=WAIT)  # the event is written first
    w = EventWriter(JsonRenderer(), FileSink(path, append=True))
    w.add_source(BytesSource(line.encode(), 1))
    w.close(timeout=WAIT)
    assert w.written_by_event() == {"caf\u00e9": 1}
    first, second = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(first)["args"] == {"i": 0} and second + "\n" == line
    stream = io.StringIO()
    w = EventWriter(JsonRenderer(), StreamSink(stream))
    w.add_source(BytesSource(line.encode(), 1))
    w.close(timeout=WAIT)
    assert stream.getvalue() == line
