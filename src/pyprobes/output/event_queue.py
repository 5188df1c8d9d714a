"""The bounded event queue between the probed program's threads and one consumer thread.

Used by the event writer (``output.writer``) and by each attach client's stream
(``attach.stream``): producers are probe handlers on any thread of the program, the consumer
is one pyprobes thread that renders or sends what it takes off.
"""

from __future__ import annotations

import threading
from collections import deque

from pyprobes.output.records import Event


class EventQueue:
    """Events from any thread to one consumer, bounded; a full or closed queue drops and counts.

    Thread rules. ``put()`` runs in probe handlers: it never blocks, never raises, and does
    O(1) work. The consumer takes events off ``items`` (``popleft``) on its own thread.

    Locks: none of our own. ``items`` is a ``deque`` (append/popleft are atomic); the bound
    is checked with ``len()`` before appending, so with several producers racing it may be
    passed by at most one event per producer thread. Drops are counted per (producer thread,
    event) so that no two threads ever update the same counter. ``wake`` is set when an event
    arrives and the flag is clear: its internal lock is held only for O(1) work, and a
    producer takes it once per batch at most (the consumer clears it before draining).
    """

    __slots__ = ("_drops", "accepting", "capacity", "items", "wake")

    def __init__(self, capacity: int, wake: threading.Event | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.items: deque[Event] = deque()
        self.capacity = capacity
        #: False once the consumer takes no more (closing, closed, failed): put() drops.
        self.accepting = True
        self.wake = wake if wake is not None else threading.Event()
        # (producer thread ident, event name) -> events put() dropped; one writer per key.
        self._drops: dict[tuple[int, str], int] = {}

    def put(self, event: Event) -> None:
        """Queue ``event``, or drop and count it if the queue is full or closed."""
        try:
            items = self.items
            if self.accepting and len(items) < self.capacity:
                items.append(event)
                wake = self.wake
                if not wake.is_set():
                    wake.set()
                return
            key = (threading.get_ident(), getattr(event, "event", "?"))
            drops = self._drops
            drops[key] = drops.get(key, 0) + 1
        except Exception:
            # Nothing may reach the probed program; at worst this event is uncounted.
            pass

    def __len__(self) -> int:
        return len(self.items)

    def dropped_by_event(self) -> dict[str, int]:
        """Events put() dropped, per event name (any thread)."""
        out: dict[str, int] = {}
        for (_, name), n in self._drops.copy().items():
            out[name] = out.get(name, 0) + n
        return out

    def after_fork_in_child(self) -> None:
        """In a fork child: empty, closed, nothing counted, a fresh wake-up (whose lock may
        have been held at fork time). Bound ``put`` methods keep working on this object."""
        self.accepting = False
        self.items = deque()
        self._drops = {}
        self.wake = threading.Event()
