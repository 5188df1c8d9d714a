"""A tracing session: specs compiled onto the engine, events to a writer and aggregations.

The session owns the engine probes it registers (one or more per spec: a wildcard places many)
and removes every one of them on ``stop()``. It is used by ``pyprobes run`` and by the attach
agent, one session per client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

import pyprobes
from pyprobes.engine.errors import ProbeError
from pyprobes.engine.probes import Kretprobe, Probe
from pyprobes.lang import ProbeSpec
from pyprobes.output import Aggregator, Event, SummaryRow
from pyprobes.tracer import programs
from pyprobes.tracer.activations import Activations
from pyprobes.tracer.hits import Emit, HitRecorder
from pyprobes.tracer.records import RingSource
from pyprobes.tracer.targets import (
    MAIN,
    Placement,
    check_module_known,
    module_matches,
    placements_in_module,
    placements_now,
    probe_for,
    static_placement,
)

_log = logging.getLogger("pyprobes")


@dataclass
class _Compiled:
    spec: ProbeSpec
    probes: list[Probe] = field(default_factory=list)
    codes: set[int] = field(default_factory=set)  # code ids placed by code (no duplicates)
    wants_imports: bool = False
    plan: programs.Plan | None = None  # run as a program in the core (when it has one)
    handlers: list[tuple[Any, str]] = field(default_factory=list)  # (program, probe text)
    recorders: list[HitRecorder] = field(default_factory=list)  # the Python path's
    filtered: int = 0  # hits its programs' filters turned away, as of the last collect
    key_overflow: int = 0  # hits of a new key its programs' full key tables turned away


class TraceSession:
    """Probes for a list of specs, feeding ``emit`` (a writer) and an optional aggregator.

    With ``events=False`` nothing is written (``emit`` is not called): the hits only feed the
    aggregator, and every spec that has a program form (``tracer.programs``) runs as a program
    in the core, whose results ``collect()`` folds into the aggregator.

    With ``spans=True`` (``--otlp``) each return event carries its activation's link to the
    enclosing one (``tracer.activations``); sessions given the same ``activations`` table (an
    attach client's, one session per spec) link across each other, with numbers unique among
    them. Given ``records`` too (a ``RingSource`` made with ``links``), the specs a program can
    record run as programs, an ``r`` probe's entry handler numbering its activation and its
    record carrying the link; without, every probe takes the Python path.

    The session's lock guards its own lists: it is taken by ``arm``/``stop`` and by the import
    listener (which runs in whatever thread imports a module), never on the probe hot path.
    """

    def __init__(
        self,
        specs: Iterable[ProbeSpec],
        emit: Emit,
        aggregator: Aggregator | None = None,
        *,
        events: bool = True,
        records: RingSource | None = None,
        spans: bool = False,
        activations: Activations | None = None,
    ) -> None:
        self._compiled = [_Compiled(s) for s in specs]
        if spans and activations is None:
            activations = Activations()
        self._activations = activations if spans else None
        if spans:
            events = True
            if records is not None and not records.links:
                raise ValueError("a session with spans needs a RingSource made with links")
        self._aggregator = aggregator
        self._events = events or aggregator is None
        self._records = records if self._events else None
        if not self._events or records is not None:
            config = aggregator.config if aggregator is not None else None
            for c in self._compiled:
                p = programs.plan(c.spec, config, events=self._events)
                c.plan = p if p.program is not None else None
        self._writer_emit = emit
        self._lock = threading.Lock()
        self._collect_lock = threading.Lock()
        self._armed = False
        self._stopped = False
        self._main_names: set[str] = set()

    # --- events -------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._events:
            self._writer_emit(event)
        agg = self._aggregator
        if agg is not None:
            agg.add(event)

    def collect(self) -> None:
        """Fold what the programs gathered since the last call into the aggregator.

        Callers on several threads (``--interval``, ``/metrics``, the final report) are taken
        one at a time, so once a collect() returns, everything taken before it is folded in.
        """
        with self._collect_lock:
            self._collect_into(self._aggregator)

    def _collect_into(self, agg: Aggregator | None) -> None:
        for c in self._compiled:
            if c.plan is None or c.plan.program is None:
                continue
            for h, probe_text in list(c.handlers):
                results = h.take()
                c.filtered += results.filtered
                c.key_overflow += results.overflow
                if agg is not None and c.plan.aggregates:
                    programs.add_results(agg, c.spec.event, c.plan, results, probe_text)

    # --- placing probes -------------------------------------------------------------------

    def _register(self, c: _Compiled, pl: Placement) -> None:
        probe: Probe
        handler: Any
        if c.plan is not None and c.plan.program is not None:
            source = self._records
            if source is not None:
                handler = pyprobes.program_handler(
                    c.plan.program,
                    key_of=programs.key_of(c.plan),
                    ring=source.ring,
                    probe=source.new_probe(c.spec, pl.probe_text),
                )
            else:
                handler = pyprobes.program_handler(c.plan.program, key_of=programs.key_of(c.plan))
            on_entry = on_return = handler
        else:
            rec = HitRecorder(c.spec, pl.probe_text, self._emit, pl.addr, self._activations)
            c.recorders.append(rec)
            handler, on_entry, on_return = None, rec.on_entry, rec.on_return
        probe = probe_for(c.spec, pl, on_entry, on_return)
        if isinstance(probe, Kretprobe) and self._activations is not None:
            # the activation is numbered at its entry; its return (a record, or an Event of
            # the HitRecorder) carries the link
            probe.entry_handler = self._activations.on_entry
        if isinstance(probe, Kretprobe):
            pyprobes.register_kretprobe(probe)
        else:
            pyprobes.register_kprobe(probe)  # type: ignore[arg-type]
        c.probes.append(probe)
        if handler is not None:
            c.handlers.append((handler, pl.probe_text))
        if pl.addr is not None:
            c.codes.add(id(pl.addr))

    def _place_all(self, c: _Compiled, placements: Iterable[Placement]) -> None:
        for pl in placements:
            if pl.addr is not None and id(pl.addr) in c.codes:
                continue
            self._register(c, pl)

    def arm(self) -> None:
        """Register every spec's probes (all or none); wildcards also watch later imports."""
        with self._lock:
            if self._armed:
                return
            try:
                for c in self._compiled:
                    self._arm_one(c)
            except BaseException:
                self._unregister_all()
                raise
            self._armed = True
            if any(c.wants_imports for c in self._compiled):
                pyprobes.add_import_listener(self._on_import)

    def _arm_one(self, c: _Compiled) -> None:
        t = c.spec.target
        if t.module == MAIN:
            return  # placed by arm_main() on the program's code
        static = static_placement(c.spec)
        if static is not None:
            self._register(c, static)
            return
        check_module_known(c.spec)
        self._place_all(c, placements_now(c.spec))
        c.wants_imports = True

    def arm_main(self, code: CodeType, names: Iterable[str] = (MAIN,)) -> None:
        """Place the specs that name the program's own module on its code, before it runs."""
        with self._lock:
            self._main_names = set(names) | {MAIN}
            for c in self._compiled:
                t = c.spec.target
                if t.path is not None or t.module is None:
                    continue
                if not any(module_matches(t, n) for n in self._main_names):
                    continue
                try:
                    self._place_all(c, placements_in_module(c.spec, MAIN, code))
                except ProbeError:
                    self._unregister_all()
                    raise
        pyprobes.announce_code(code, MAIN)

    def _on_import(self, name: str, origin: str | None, code: CodeType) -> None:
        with self._lock:
            if self._stopped:
                return
            for c in self._compiled:
                if not c.wants_imports or not module_matches(c.spec.target, name):
                    continue
                try:
                    self._place_all(c, placements_in_module(c.spec, name, code))
                except ProbeError as exc:
                    _log.warning("pyprobes: %s: %s", c.spec.text or c.spec, exc)

    # --- stopping --------------------------------------------------------------------------

    def _unregister_all(self) -> None:
        for c in self._compiled:
            for p in c.probes:
                try:
                    if isinstance(p, Kretprobe):
                        pyprobes.unregister_kretprobe(p)
                    else:
                        pyprobes.unregister_kprobe(p)  # type: ignore[arg-type]
                except Exception:
                    _log.exception("pyprobes: unregistering %r failed", p)

    def stop(self) -> None:
        """Remove every probe of the session (idempotent); counters stay readable."""
        pyprobes.remove_import_listener(self._on_import)
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._unregister_all()

    # --- reporting -------------------------------------------------------------------------

    def probes(self) -> list[Probe]:
        """Every engine probe the session registered."""
        return [p for c in self._compiled for p in c.probes]

    def key_overflow(self) -> dict[str, int]:
        """Per event: hits whose key a program could not keep (its table of --by keys was full:
        ``programs.MAX_KEYS``), as of the last ``collect()``; they are in no key's count."""
        out: dict[str, int] = {}
        for c in self._compiled:
            if c.key_overflow:
                out[c.spec.event] = out.get(c.spec.event, 0) + c.key_overflow
        return out

    def summary_rows(
        self,
        lost_by_event: dict[str, int] | None = None,
        written_by_event: dict[str, int] | None = None,
    ) -> list[SummaryRow]:
        """Per spec: hits, misses, events lost, hits its filter turned away (its programs'
        as of the last ``collect()``), and, given ``written_by_event`` (a run that writes
        events), events written."""
        lost = lost_by_event or {}
        rows = []
        for c in self._compiled:
            hits = sum(p.nhit for p in c.probes)
            misses = sum(p.nmissed for p in c.probes)
            filtered = c.filtered + sum(r.filtered for r in c.recorders)
            written = None if written_by_event is None else written_by_event.get(c.spec.event, 0)
            rows.append(
                SummaryRow(c.spec.event, hits, misses, lost.get(c.spec.event, 0), filtered, written)
            )
        return rows

    def paths(self) -> list[tuple[str, str]]:
        """Per spec: its event and how its hits run ("program", or "python: why")."""
        out = []
        agg = self._aggregator
        for c in self._compiled:
            if c.plan is not None:
                out.append((c.spec.event, "program"))
            elif self._activations is not None and self._records is None:
                out.append((c.spec.event, "python: --otlp makes spans from events"))
            elif self._events and self._records is None:
                out.append((c.spec.event, "python: events are written"))
            else:
                config = agg.config if agg is not None else None
                why = programs.plan(c.spec, config, events=self._events).reason
                out.append((c.spec.event, "python: " + why))
        return out

    def describe(self) -> list[str]:
        """One line per engine probe: spec event and where it is armed (for ``check``)."""
        out = []
        for c in self._compiled:
            for p in c.probes:
                state = "pending" if p.pending else "armed"
                out.append(f"{c.spec.event}: {p!r} {state}")
        return out
