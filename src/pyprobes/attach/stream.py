"""One attach client's outgoing stream: the only thread that writes to its socket.

``pyprobes-agent-client-N-send`` sends, in order: the replies its session queued, the events
the program's threads put on the bounded queue (``output.event_queue``, the event writer's
too) in batches of at most BATCH_EVENTS events and BATCH_BYTES bytes, a few batches a round
(all when it ends), then the events that probe programs recorded in the client's ring of
records (``tracer.records``: JSON Lines written by the core, with the GIL released on the C
core, sent as they are), the aggregations of aggregating specs every round, and a ``lost``
report when the losses changed. A stalled client blocks only this thread: the program's
threads then drop and count (a full ring counts too). Every event put on the queue or
recorded in the ring is sent or counted lost, per event name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyprobes.attach.protocol import encode
from pyprobes.engine.registry import own_thread
from pyprobes.output.event_queue import EventQueue

if TYPE_CHECKING:
    from pyprobes.attach.session import ClientSession, SpecEntry
    from pyprobes.tracer.records import RingSource

EVENT_CAPACITY = 16384
#: Records a buffer of a client's ring holds (two buffers: one written while one is read).
RING_CAPACITY = 16384
BATCH_EVENTS = 512
BATCH_BYTES = 1 << 20
BATCHES_PER_ROUND = 8
LOSS_REPORT_INTERVAL = 0.5
BYE_TIMEOUT = 0.5
#: Replies a session may have queued; then its reader waits (the client reads no replies).
MAX_QUEUED_REPLIES = 256

_log = logging.getLogger("pyprobes.agent")


@dataclass(frozen=True)
class Final:
    """Queued by the session: flush the events, send the last message, close."""

    message: dict[str, object] | None
    entries: list[SpecEntry] = field(default_factory=list)


class EventStream:
    """The sender thread of one client, its event queue, its queued replies and its losses.

    ``events.put`` runs on the program's threads (see ``EventQueue``); ``send``,
    ``wait_for_room`` and ``finish`` on the session's reader; the rest on the sender thread,
    except the counters (any thread). Losses on the sender thread (an event that failed to
    encode or to be sent) have one writer: that thread.
    """

    def __init__(self, session: ClientSession, sock: socket.socket, name: str) -> None:
        self.session = session
        self.sock = sock
        self.events = EventQueue(EVENT_CAPACITY)
        self.control: deque[bytes | Final] = deque()
        self.room = threading.Event()  # set when a reply was taken off ``control``
        self._lost: dict[str, int] = {}
        self._reported_lost = 0
        self._reported_counts: list[dict[str, object]] = []
        #: Seconds between rounds; an aggregating add may ask for shorter.
        self.round = LOSS_REPORT_INTERVAL
        self.sent = 0
        self._records: RingSource | None = None  # made by the first spec that records events
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- other threads --------------------------------------------------------------------

    def send(self, message: dict[str, object]) -> None:
        """Queue a message (a reply) for the sender thread."""
        self.control.append(encode(message))
        self.events.wake.set()

    def finish(self, final: Final) -> None:
        """Queue the end: the sender flushes the events, sends ``final`` and closes."""
        self.control.append(final)
        self.events.wake.set()

    def wait_for_room(self) -> None:
        """Backpressure: a client that sends requests but reads no replies gets no more
        answers queued (the target's memory stays bounded); its requests wait in its socket."""
        while len(self.control) >= MAX_QUEUED_REPLIES and not self.session.closed:
            self.room.clear()
            if len(self.control) < MAX_QUEUED_REPLIES:
                break
            self.room.wait(0.5)

    def wake_all(self) -> None:
        """Wake the sender and a reader waiting for room (closing)."""
        self.events.wake.set()
        self.room.set()

    def records(self) -> RingSource:
        """The client's ring of event records, for the probes whose programs can record their
        events in the core (the session's reader, arming a spec). Its return records carry
        their activation links, for ``spans`` specs (a pointer test for the others)."""
        if self._records is None:
            from pyprobes.tracer.records import RingSource

            source = RingSource(RING_CAPACITY, links=True)
            source.wake_writer = self.events.wake.set
            self._records = source
        return self._records

    def lost_by_event(self) -> dict[str, int]:
        out = self.events.dropped_by_event()
        sources = [self._lost.copy()]
        if self._records is not None:
            sources.append(self._records.lost_by_event())
        for lost in sources:
            for name, n in lost.items():
                out[name] = out.get(name, 0) + n
        return out

    def lost_message(self) -> dict[str, object]:
        by_event = self.lost_by_event()
        return {"total": sum(by_event.values()), "by_event": by_event}

    def forget_in_child(self) -> None:
        """After fork, in the child: nothing queued, nothing sent (the parent's connection)."""
        self.events.after_fork_in_child()
        if self._records is not None:
            self._records.after_fork_in_child()
        self.control = deque()
        self.room = threading.Event()

    # -- the sender thread ------------------------------------------------------------------

    def _lose(self, name: str, n: int = 1) -> None:
        self._lost[name] = self._lost.get(name, 0) + n

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data, socket.MSG_NOSIGNAL)

    def _send_events(self, drain: bool, until: float | None = None) -> None:
        """Send queued events in batches: a few per round, all when draining. ``until``
        bounds a drain (a bye must reach the client before the program exits): what is
        still queued then is counted lost."""
        from pyprobes.output.sanitize import dumps

        q = self.events.items
        rounds = 0
        while q and (drain or rounds < BATCHES_PER_ROUND):
            if until is not None and time.monotonic() > until:
                while q:
                    self._lose(getattr(q.popleft(), "event", "?"))
                break
            rounds += 1
            parts: list[str] = []
            names: list[str] = []
            size = 0
            while q and len(parts) < BATCH_EVENTS and size < BATCH_BYTES:
                event = q.popleft()
                try:
                    text = dumps(event.to_json_dict())
                except Exception:
                    self._lose(getattr(event, "event", "?"))
                    continue
                parts.append(text)
                names.append(event.event)
                size += len(text)
            if not parts:
                continue
            line = '{"type":"events","events":[' + ",".join(parts) + "]}\n"
            try:
                self._send(line.encode("utf-8", "backslashreplace"))
            except OSError:
                for name in names:
                    self._lose(name)
                raise
            self.sent += len(parts)
        if q:
            self.events.wake.set()
        self._send_records()

    def _send_records(self) -> None:
        """Send what the ring holds, as the core wrote it: its JSON Lines, joined into events
        messages of at most BATCH_EVENTS events and BATCH_BYTES bytes."""
        source = self._records
        if source is None:
            return
        from pyprobes.output.render_json import JsonRenderer

        text, _ = source.drain(JsonRenderer())
        data = text.encode("utf-8", "backslashreplace") if isinstance(text, str) else text
        lines = data.splitlines()  # (a JSON line holds no raw line break)
        at = 0
        while at < len(lines):
            end, size = at, 0
            while end < len(lines) and end - at < BATCH_EVENTS and size < BATCH_BYTES:
                size += len(lines[end]) + 1
                end += 1
            batch = lines[at:end]
            try:
                self._send(b'{"type":"events","events":[' + b",".join(batch) + b"]}\n")
            except OSError:
                for line in lines[at:]:
                    self._lose(_event_name(line))
                raise
            self.sent += len(batch)
            at = end

    def _send_aggregates(self, final: Final | None) -> None:
        """What the aggregating specs gathered since the last round, in one message."""
        from pyprobes.output.aggregate_data import aggregator_data

        entries = self.session.specs()
        if final is not None:
            entries += [e for e in final.entries if e not in entries]
        data: list[dict[str, object]] = []
        for entry in entries:
            if entry.aggregator is None or entry.trace is None:
                continue
            entry.trace.collect()
            data += aggregator_data(entry.aggregator.snapshot_and_reset())
        if data:
            self._send(encode({"type": "aggregates", "aggregates": data}))

    def _report_losses(self) -> None:
        lost = self.lost_message()
        total = lost["total"]
        if total != self._reported_lost:
            assert isinstance(total, int)
            self._reported_lost = total
            self._send(encode({"type": "lost", **lost}))

    def _summary(self, entries: list[SpecEntry]) -> list[dict[str, object]]:
        """The summary rows of ``entries``' probes: the protocol's form of summary_rows."""
        lost = self.lost_by_event()
        rows: list[dict[str, object]] = []
        for entry in entries:
            if entry.trace is None:
                continue
            for row in entry.trace.summary_rows(lost):
                rows.append(
                    {
                        "event": row.event,
                        "hits": row.hits,
                        "misses": row.misses,
                        "lost": row.lost,
                        "filtered": row.filtered or 0,
                    }
                )
        return rows

    def _report_counts(self) -> None:
        """The probes' counters so far (a ``counts`` message), when they changed: a client's
        /metrics and OTLP metrics show them while it is attached, not only at detach."""
        rows = self._summary(self.session.specs())
        if rows != self._reported_counts:
            self._reported_counts = rows
            self._send(encode({"type": "counts", "summary": rows}))

    def _send_final(self, final: Final) -> None:
        message = final.message
        if message is not None and message.get("type") == "detached":
            rows = self._summary(final.entries)
            message = {**message, "summary": rows, "lost": self.lost_message()}
        if message is not None:
            self._send(encode(message))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _run(self) -> None:
        with own_thread():  # the agent's calls are not the program's hits
            self._send_until_done()

    def _send_until_done(self) -> None:
        session = self.session
        try:
            while True:
                wake = self.events.wake
                wake.wait(self.round)
                wake.clear()
                final: Final | None = None
                control = self.control
                while control:
                    item = control.popleft()
                    if isinstance(item, Final):
                        final = item
                        break
                    self._send(item)
                    self.room.set()
                bye = final is not None and (final.message or {}).get("type") == "bye"
                until = time.monotonic() + BYE_TIMEOUT / 2 if bye else None
                self._send_events(drain=final is not None, until=until)
                self._send_aggregates(final)
                self._report_losses()
                if final is None:
                    self._report_counts()
                if final is not None:
                    self._send_final(final)
                    return
                if session.closed and not control and not session.bye_coming:
                    return
        except OSError:
            pass  # the client is gone: the reader sees it too and cleans up
        except Exception:
            _log.exception("pyprobes agent: sending to client %d failed", session.n)
        finally:
            self.events.accepting = False
            if session.reader.is_alive() and not session.closed:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)


def _event_name(line: bytes) -> str:
    """The event name of one JSON line (counting what could not be sent)."""
    try:
        name = json.loads(line).get("event")
    except (ValueError, AttributeError):
        return "?"
    return name if isinstance(name, str) else "?"
