"""Chrome trace-event JSON output, for Perfetto and chrome://tracing."""

from __future__ import annotations

from pyprobes.output.records import RETURN, Event, function_of
from pyprobes.output.sanitize import dumps

# The JSON Array Format, whose closing ``]`` is optional for the trace viewers ("to support
# tracing systems that can not cleanly finish writing the trace", the format's own words):
# a program that ends by os._exit or SIGKILL still leaves a file Perfetto loads.
HEADER = "[\n"
FOOTER = "\n]\n"

# Perfetto reads pid/tid as uint32 and puts events with a larger tid on the process
# track; chrome://tracing is happiest below 2**31. Python's threading.get_ident() is a
# pthread_t address, so such ids are replaced by small per-trace numbers.
MAX_TID = 2**31 - 1


class ChromeRenderer:
    """Renders returns as complete ("X") events and entries as thread-scoped instants.

    A return of generator, coroutine or async generator code is an async slice instead (a
    "b"/"e" pair with an id of its own, cat "async"): its activation spans suspensions while
    other code runs on the thread, and an X slice would overlap its neighbours. Slices are
    named after the probe (``module:qualname``); the event name is in ``args["event"]``.

    Stateful, one instance per output file: it writes the commas between events, numbers
    the async slices and writes a thread_name metadata event the first time a thread (or its
    new name) is seen.
    """

    def __init__(self) -> None:
        self._first = True
        self._thread_names: dict[tuple[int, int], str] = {}
        self._tids: dict[tuple[int, int], int] = {}
        self._async_ids = 0

    def header(self) -> str:
        """Opens the array of trace events."""
        return HEADER

    def footer(self) -> str:
        """Closes the array; the file is strict JSON after it, even empty."""
        return FOOTER

    def _tid(self, pid: int, thread_id: int) -> int:
        if 0 <= thread_id <= MAX_TID:
            return thread_id
        key = (pid, thread_id)
        tid = self._tids.get(key)
        if tid is None:
            tid = self._tids[key] = len(self._tids) + 1
        return tid

    def render(self, event: Event) -> str:
        """The event's JSON objects, preceded by a comma unless it is the first."""
        tid = self._tid(event.pid, event.thread_id)
        objects: list[dict[str, object]] = []
        key = (event.pid, event.thread_id)
        if self._thread_names.get(key) != event.thread_name:
            self._thread_names[key] = event.thread_name
            objects.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": event.pid,
                    "tid": tid,
                    "args": {"name": event.thread_name},
                }
            )
        args = dict(event.args)
        # A fetch arg of the same name wins: it is the same value or the user's choice.
        args.setdefault("event", event.event)
        name = function_of(event.probe)
        record: dict[str, object] = {"name": name, "cat": event.group}
        duration = event.duration_ns
        if event.kind == RETURN:
            args.setdefault("retval", event.retval)
            args.setdefault("exception", event.exception)
        if event.kind == RETURN and isinstance(duration, int) and duration >= 0:
            start = (event.time_ns - duration) / 1000
            if event.is_async:
                self._async_ids += 1
                ids = {"cat": f"async,{event.group}", "id": self._async_ids}
                record.update(ids, ph="b", ts=start, pid=event.pid, tid=tid, args=args)
                objects.append(record)
                record = {"name": name, **ids, "ph": "e", "ts": event.time_ns / 1000}
                record.update(pid=event.pid, tid=tid)
                objects.append(record)
                return self._joined(objects)
            record.update(ph="X", ts=start, dur=duration / 1000)
        else:
            record.update(ph="i", s="t", ts=event.time_ns / 1000)
        record.update(pid=event.pid, tid=tid, args=args)
        objects.append(record)
        return self._joined(objects)

    def _joined(self, objects: list[dict[str, object]]) -> str:
        text = ",\n".join(dumps(o) for o in objects)
        if self._first:
            self._first = False
            return text
        return ",\n" + text
