"""The bridge from probe handlers to output: a bounded queue drained by one writer thread."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Protocol

from pyprobes.output.event_queue import EventQueue
from pyprobes.output.records import Event
from pyprobes.output.render import Renderer
from pyprobes.output.sinks import Sink

WRITER_THREAD_NAME = "pyprobes-writer"
DEFAULT_CAPACITY = 65536
DEFAULT_BATCH = 1024
#: How often the writer reads its record sources when nothing wakes it earlier (seconds).
SOURCE_POLL = 0.02


class RecordSource(Protocol):
    """Events kept elsewhere (a core's ring of records) that the writer renders and writes."""

    def drain(self, renderer: Renderer) -> tuple[str | bytes, dict[str, int]]:
        """The text of what is held now (str, or UTF-8 bytes), and how many events it has per
        event name (writer thread)."""
        ...

    def lost_by_event(self) -> dict[str, int]:
        """Events that will never be written, per event name."""
        ...


class EventWriter:
    """Takes events from the probed program's threads and writes them on its own thread.

    Thread rules. ``emit()`` runs in probe handlers, on any thread of the program: it
    never blocks, never raises, and does O(1) work. Rendering and all I/O happen on one
    daemon thread named ``pyprobes-writer`` (the engine should not fire probes there).
    ``close()`` and the counters may be used from any other thread.

    Locks: none of our own; the queue is an ``EventQueue`` (``output.event_queue``, shared
    with the attach agent's streams), whose ``put`` is ``emit``.

    Accounting: every emitted event ends up in exactly one of ``written`` or ``lost``
    (dropped when full or after close, failed to render, or unwritten after an I/O
    error); until then it is ``pending``.
    """

    def __init__(
        self,
        renderer: Renderer,
        sink: Sink,
        capacity: int = DEFAULT_CAPACITY,
        *,
        batch_size: int = DEFAULT_BATCH,
        thread_context: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError(
                f"capacity and batch_size must be at least 1, got {capacity} and {batch_size}"
            )
        self._renderer = renderer
        self._thread_context = thread_context  # the engine's own_thread, from the tracer
        self._batch_size = batch_size
        self._queue = EventQueue(capacity)
        #: Queue ``event`` for writing, or drop and count it if the queue is full; never
        #: blocks or raises (the queue's ``put``: no call of ours in between).
        self.emit: Callable[[Event], None] = self._queue.put
        self._closing = False
        self._abandoned = False
        self._stopped = False
        self._forked = False
        # event name -> events lost on the writer thread; only that thread updates it.
        self._writer_lost: dict[str, int] = {}
        self._written = 0
        # event name -> events written; only the writer thread updates it.
        self._written_by: dict[str, int] = {}
        self._sources: list[RecordSource] = []
        self.render_errors = 0
        self.error: BaseException | None = None
        self._handle = sink.open()
        # The header is written now, on the caller's thread: a program that ends by
        # os._exit before the writer thread ever runs still leaves a loadable (empty) file.
        try:
            header = renderer.header()
        except Exception as exc:
            self.error = exc
            self._queue.accepting = False
        else:
            self._write(header)
        self._thread = threading.Thread(target=self._run, name=WRITER_THREAD_NAME, daemon=True)
        _live_writers.add(self)
        self._thread.start()

    # -- producer side: any thread, inside probe handlers -------------------------------

    def add_source(self, source: RecordSource) -> None:
        """Also write what ``source`` holds, read every SOURCE_POLL s or when woken."""
        self._sources = [*self._sources, source]
        self._queue.wake.set()

    def wake(self) -> None:
        """Ask the writer thread to read its sources now (cheap; from a record source)."""
        self._queue.wake.set()

    # -- counters -----------------------------------------------------------------------

    @property
    def written(self) -> int:
        """Events rendered and written to the sink."""
        return self._written

    def written_by_event(self) -> dict[str, int]:
        """Events written per event name, for the exit summary."""
        return self._written_by.copy()

    @property
    def pending(self) -> int:
        """Events queued and not yet written (0 once the writer has stopped)."""
        return 0 if self._stopped else len(self._queue)

    @property
    def lost(self) -> int:
        """Events that will never be written."""
        return sum(self.lost_by_event().values())

    def lost_by_event(self) -> dict[str, int]:
        """Lost events per event name, for the exit summary."""
        out = self._queue.dropped_by_event()
        for name, n in self._writer_lost.copy().items():
            out[name] = out.get(name, 0) + n
        for source in self._sources:
            for name, n in source.lost_by_event().items():
                out[name] = out.get(name, 0) + n
        if self._stopped:
            # Emitted by a producer that passed the accepting check as the writer stopped.
            for event in self._queue.items.copy():
                name = getattr(event, "event", "?")
                out[name] = out.get(name, 0) + 1
        return out

    @property
    def thread(self) -> threading.Thread:
        """The writer thread, so the engine can leave it unprobed."""
        return self._thread

    @property
    def forked(self) -> bool:
        """True in a forked child, whose copy of the writer only counts (see ``error``)."""
        return self._forked

    @property
    def closed(self) -> bool:
        """True once the writer thread has finished."""
        return self._stopped

    # -- writer thread ------------------------------------------------------------------

    def _lose(self, name: str, n: int = 1) -> None:
        self._writer_lost[name] = self._writer_lost.get(name, 0) + n

    def _write(self, text: str | bytes) -> bool:
        if self.error is not None:
            return False
        try:
            if isinstance(text, bytes):
                write_utf8 = getattr(self._handle, "write_utf8", None)
                if write_utf8 is None:
                    text = text.decode("utf-8", "surrogatepass")
                elif text:
                    write_utf8(text)
                    self._handle.flush()
                    return True
            if text:
                self._handle.write(text)
                self._handle.flush()
        except Exception as exc:
            self.error = exc
            self._queue.accepting = False
            return False
        return True

    def _write_batch(self) -> None:
        popleft = self._queue.items.popleft
        batch: list[Event] = []
        for _ in range(self._batch_size):
            try:
                batch.append(popleft())
            except IndexError:
                break
        render = self._renderer.render
        parts: list[str] = []
        names: list[str] = []
        for event in batch:
            try:
                parts.append(render(event))
            except Exception:
                self.render_errors += 1
                self._lose(getattr(event, "event", "?"))
            else:
                names.append(getattr(event, "event", "?"))
        if self._write("".join(parts)):
            self._written += len(names)
            written = self._written_by
            for name in names:
                written[name] = written.get(name, 0) + 1
        else:
            for name in names:
                self._lose(name)

    def _drain_sources(self) -> None:
        for source in self._sources:
            if self.error is not None:
                return
            try:
                text, counts = source.drain(self._renderer)
            except Exception:
                self.render_errors += 1
                continue
            ok = self._write(text)
            for name, n in counts.items():
                if ok:
                    self._written += n
                    self._written_by[name] = self._written_by.get(name, 0) + n
                else:
                    self._lose(name, n)

    def _run(self) -> None:
        # The writer's own calls (json, str methods) are not the program's hits: whoever made
        # the writer says how to tell the engine (pyprobes.own_thread), output knows no engine.
        with self._thread_context():
            self._drain()

    def _drain(self) -> None:
        queue = self._queue
        buf = queue.items
        wake = queue.wake
        try:
            while self.error is None and not self._abandoned:
                wake.wait(SOURCE_POLL if self._sources else None)
                # Clear before draining: an append after the drain then sets it again.
                wake.clear()
                while buf and self.error is None and not self._abandoned:
                    self._write_batch()
                closing = self._closing
                self._drain_sources()
                if closing and not buf:
                    break
            if self.error is None:
                try:
                    footer = self._renderer.footer()
                except Exception as exc:
                    self.error = exc
                else:
                    self._write(footer)
        finally:
            queue.accepting = False
            self._stopped = True
            try:
                self._handle.close()
            except Exception as exc:
                if self.error is None:
                    self.error = exc

    # -- shutdown -----------------------------------------------------------------------

    def close(self, timeout: float | None = 5.0) -> bool:
        """Drain the queue, write the footer, flush and stop; True if all of it succeeded.

        Idempotent. Events emitted afterwards are counted lost. If the sink is still
        blocked after ``timeout`` seconds it returns False; once the blocked write
        returns, what is still queued is counted lost and the footer written.
        """
        self._queue.accepting = False
        self._closing = True
        if self._forked:
            return False
        self._queue.wake.set()
        if threading.current_thread() is self._thread:
            return False
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandoned = True
            self._queue.wake.set()
            return False
        return self.error is None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # The writer thread does not exist in the child, and the wake-up lock may have
        # been held at fork time: the child's writer only counts, the parent writes.
        self._queue.after_fork_in_child()
        self._forked = True
        self._stopped = True
        self._writer_lost = {}
        self._written = 0
        self._written_by = {}
        self.error = RuntimeError("after fork the child writes no events; the parent does")
        for source in self._sources:
            after = getattr(source, "after_fork_in_child", None)
            if after is not None:
                after()


_live_writers: weakref.WeakSet[EventWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for writer in list(_live_writers):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
