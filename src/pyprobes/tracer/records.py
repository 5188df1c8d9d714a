"""Events recorded by probe programs in the core's ring, turned into output on the writer thread.

A spec whose events a program can record (``programs.plan`` with ``events=True``) writes fixed
records into the engine's ring at each hit; ``RingSource.drain`` runs on the event writer's
thread and renders what the ring holds: JSON Lines and text in C when the core has them
(``take_json``, ``take_text``, whose fallback for a record they cannot spell is this module's
own rendering), any other format through the output renderers from ``Event`` records. Either
way the text is the Python path's.

With ``links`` (attach's stream) a return's record keeps its activation's link, which its JSON
line carries. With ``spans`` (``--otlp``) too, and: every record
becomes an ``Event``, those with an activation link go to ``spans`` (the span thread's queue),
and they are rendered only if events are written too (``write``). Return records the full ring
lost are told to ``spans_lost``: they are spans never made.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pyprobes
from pyprobes.lang import ProbeSpec, exception_text, render
from pyprobes.output import Event
from pyprobes.output.records import function_of
from pyprobes.output.render import Renderer
from pyprobes.output.render_chrome import ChromeRenderer
from pyprobes.output.render_json import JsonRenderer
from pyprobes.output.render_text import TextRenderer
from pyprobes.output.sanitize import dumps
from pyprobes.tracer.activations import KEY, Link

#: The args of a chrome event that a fetch arg of the same name replaces, and their flags.
_CHROME_OWN = (("event", 1), ("retval", 2), ("exception", 4))
#: Records a buffer of the ring holds (there are two: one is written while the other is read).
RING_CAPACITY = 65_536


@dataclass(frozen=True, slots=True)
class _Probe:
    event: str
    group: str
    kind: str
    probe: str
    names: tuple[str, ...]


class RingSource:
    """The session's ring and what its probes' records need to become events."""

    def __init__(
        self,
        capacity: int = RING_CAPACITY,
        *,
        links: bool = False,
        spans: Callable[[Event], object] | None = None,
        spans_lost: Callable[[int], object] | None = None,
        write: bool = True,
    ) -> None:
        link_key = KEY if links or spans is not None else None
        self.ring = pyprobes.record_ring(capacity, render, exception_text, self._wake, link_key)
        #: Return records carry their activation's link (``--otlp``; JSON writes it).
        self.links = link_key is not None
        self.spans = spans
        self.spans_lost = spans_lost
        self.write = write
        self._probes: list[_Probe] = []
        self._statics: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self._chrome_statics: tuple[tuple[str, str, str, int, tuple[str, ...]], ...] = ()
        self._lock = threading.Lock()  # new_probe (import listener, arm) against drain
        self._lost: dict[str, int] = {}
        self._json = JsonRenderer()
        self._text = TextRenderer()
        self.wake_writer: object = None  # the writer's wake-up, set by the writer

    @staticmethod
    def takes(output_format: str) -> bool:
        """Whether events in this format are best written from the ring: JSON always (the
        reference core renders it from records as fast as from events), text and chrome when
        the core writes them itself (in Python, records come faster than they are rendered)."""
        if output_format == "json":
            return True
        return output_format in ("text", "chrome") and pyprobes.core_name() == "c"

    def _wake(self) -> None:
        wake = self.wake_writer
        if callable(wake):
            wake()

    def new_probe(self, spec: ProbeSpec, probe_text: str) -> int:
        """A ring id for one placement of ``spec``, whose records name ``probe_text``."""
        with self._lock:
            kind = "r" if spec.is_return else "p"
            p = _Probe(
                spec.event, spec.group, kind, probe_text, tuple(fa.name for fa in spec.fetchargs)
            )
            pid: int = self.ring.add_probe()
            assert pid == len(self._probes)
            self._probes.append(p)
            return pid

    def _statics_of(self, probes: list[_Probe]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Per probe, its JSON up to ``"location":`` and its fetch args' keys. Made here, on
        the writer's thread: json called where the probe is placed could hit a json probe."""
        statics = self._statics
        for p in probes[len(statics) :]:
            prefix = dumps({"event": p.event, "group": p.group, "kind": p.kind, "probe": p.probe})
            keys = tuple(dumps(n) + ":" for n in p.names)
            statics = (*statics, (prefix[:-1] + ',"location":', keys))
        self._statics = statics
        return statics

    def event_of(self, rec: tuple[object, ...]) -> Event:
        """The Event a record stands for (as HitRecorder would have made it)."""
        (i, kind, time_ns, tid, tname, values, retval, exc, duration, location, site, is_async) = (
            rec[:12]
        )
        link: Link | None = rec[12] if len(rec) > 12 else None  # type: ignore[assignment]
        p = self._probes[i]  # type: ignore[call-overload]
        ret = kind == "r"
        return Event(
            event=p.event,
            group=p.group,
            kind=p.kind,
            probe=p.probe,
            location=location,  # type: ignore[arg-type]
            time_ns=time_ns,  # type: ignore[arg-type]
            pid=os.getpid(),
            thread_id=tid,  # type: ignore[arg-type]
            thread_name=tname,  # type: ignore[arg-type]
            args=dict(zip(p.names, values, strict=True)),  # type: ignore[call-overload]
            retval=retval if ret else None,
            exception=exc,  # type: ignore[arg-type]
            duration_ns=duration,  # type: ignore[arg-type]
            site=site if ret else "",  # type: ignore[arg-type]
            is_async=bool(is_async),
            activation=link if ret else None,
        )

    def _fallback(self, rec: tuple[object, ...]) -> str:
        return self._json.render(self.event_of(rec))

    def _text_fallback(self, rec: tuple[object, ...]) -> str:
        return self._text.render(self.event_of(rec))

    @staticmethod
    def _text_statics_of(probes: list[_Probe]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """Per probe, what take_text writes of it: its event, its probe and its names."""
        return tuple((p.event, p.probe, p.names) for p in probes)

    def _chrome_statics_of(
        self, probes: list[_Probe]
    ) -> tuple[tuple[str, str, str, int, tuple[str, ...]], ...]:
        """Per probe, what take_chrome writes of it: the JSON of its slices up to their "cat"
        (then with the async cat), of its event's name, which of "event", "retval",
        "exception" its fetch args name (flags 1, 2, 4: they win), and its args' keys."""
        statics = self._chrome_statics
        for p in probes[len(statics) :]:
            name = dumps(function_of(p.probe))
            flags = sum(f for n, f in _CHROME_OWN if n in p.names)
            head = f'{{"name":{name},"cat":{dumps(p.group)}'
            async_head = f'{{"name":{name},"cat":{dumps(f"async,{p.group}")}'
            keys = tuple(dumps(n) + ":" for n in p.names)
            statics = (*statics, (head, async_head, dumps(p.event), flags, keys))
        self._chrome_statics = statics
        return statics

    def drain(self, renderer: Renderer) -> tuple[str | bytes, dict[str, int]]:
        """Render what the ring holds (writer thread): the text (UTF-8 bytes from the C core)
        and how many events it has per event name."""
        with self._lock:
            probes = list(self._probes)
        spans = self.spans
        if spans is not None and not self.write:
            return self._drain_spans(probes)
        keep = spans is not None  # --otlp with events: the records rendered, then spans
        # The C core writes JSON and text itself (byte for byte the renderers' lines); a
        # renderer of another type, even a subclass, renders Events.
        take_json = getattr(self.ring, "take_json", None)
        if type(renderer) is JsonRenderer and take_json is not None:
            statics = self._statics_of(probes)
            data, counts, lost, kept = take_json(
                statics, os.getpid(), self._fallback, keep=keep, utf8=True
            )
            self._count_lost(lost, probes)
            self._to_spans(kept, lost, probes)
            return data, self._by_event(counts, probes)
        take_text = getattr(self.ring, "take_text", None)
        if type(renderer) is TextRenderer and take_text is not None:
            statics_t = self._text_statics_of(probes)
            data, counts, lost, kept = take_text(
                statics_t, os.getpid(), self._text_fallback, keep=keep, utf8=True
            )
            self._count_lost(lost, probes)
            self._to_spans(kept, lost, probes)
            return data, self._by_event(counts, probes)
        take_chrome = getattr(self.ring, "take_chrome", None)
        if type(renderer) is ChromeRenderer and take_chrome is not None:
            chrome = renderer

            def fallback(rec: tuple[object, ...]) -> str:
                return chrome.render(self.event_of(rec))

            data, counts, lost, kept = take_chrome(
                self._chrome_statics_of(probes),
                os.getpid(),
                renderer,
                fallback,
                keep=keep,
                utf8=True,
            )
            self._count_lost(lost, probes)
            self._to_spans(kept, lost, probes)
            return data, self._by_event(counts, probes)
        records, lost = self.ring.take()
        self._count_lost(lost, probes)
        self._to_spans(None, lost, probes)
        parts = []
        by_event: dict[str, int] = {}
        for rec in records:
            name = probes[rec[0]].event
            try:
                event = self.event_of(rec)
                if spans is not None and event.activation is not None:
                    spans(event)
                parts.append(renderer.render(event))
            except Exception:
                self._lost[name] = self._lost.get(name, 0) + 1
            else:
                by_event[name] = by_event.get(name, 0) + 1
        return "".join(parts), by_event

    def _drain_spans(self, probes: list[_Probe]) -> tuple[str | bytes, dict[str, int]]:
        """``drain`` under --otlp with no events written: the records' spans only."""
        records, lost = self.ring.take()
        self._count_lost(lost, probes)
        self._to_spans(records, lost, probes)
        return "", {}

    def _to_spans(
        self, records: list[tuple[object, ...]] | None, lost: dict[int, int], probes: list[_Probe]
    ) -> None:
        """The return records with an activation link to ``spans`` (the span thread's queue),
        and the count of returns the full ring lost to ``spans_lost``."""
        spans = self.spans
        if spans is None:
            return
        if lost and self.spans_lost is not None:
            returns = sum(n for i, n in lost.items() if probes[i].kind == "r")
            if returns:
                self.spans_lost(returns)
        for rec in records or ():
            if rec[1] == "r" and rec[12] is not None:
                try:
                    spans(self.event_of(rec))
                except Exception:  # an Event that cannot be made: its span is lost
                    if self.spans_lost is not None:
                        self.spans_lost(1)

    @staticmethod
    def _by_event(counts: dict[int, int], probes: list[_Probe]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, n in counts.items():
            name = probes[i].event
            out[name] = out.get(name, 0) + n
        return out

    def _count_lost(self, lost: dict[int, int], probes: list[_Probe]) -> None:
        for i, n in lost.items():
            name = probes[i].event
            self._lost[name] = self._lost.get(name, 0) + n

    def lost_by_event(self) -> dict[str, int]:
        """Records lost (the ring was full, or rendering failed) per event name."""
        return dict(self._lost)

    def after_fork_in_child(self) -> None:
        """The child's inherited records are the parent's to write."""
        self.ring.clear_after_fork()
