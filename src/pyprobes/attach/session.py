"""One attach client's session: its requests, its probes, its lifecycle.

``pyprobes-agent-client-N`` reads, validates and answers that client's requests (it arms and
removes its probes); it lets the client go once it has held no probes and sent no request for
``idle_timeout`` seconds, and refuses an ``add`` that would probe more than ``max_functions``
functions before placing any (both bound what a client can cost). Its probes belong to the
connection and are removed when it detaches or disconnects, cleanly or not. What goes to the
client is sent by its stream (``attach.stream``): the session only queues.

Locks: the session's ``_lock`` guards its probe table and its closed flag; it is never taken
on the hot path, and never held while the server's lock is taken (the server copies its
client list first).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import TYPE_CHECKING

import pyprobes
from pyprobes.attach.errors import ProtocolError
from pyprobes.attach.protocol import (
    BAD_SPEC,
    HANDSHAKE,
    HANDSHAKE_TIMEOUT,
    INTERNAL,
    LIMIT,
    MAX_LINE,
    MAX_PROBES_PER_CLIENT,
    MAX_SPECS_PER_CLIENT,
    NO_SUCH_PROBE,
    PROBE_ERROR,
    PROTOCOL_VERSION,
    TOO_LARGE,
    VERSION,
    LineReader,
    Request,
    error,
    parse_request,
    request_id_of,
)
from pyprobes.attach.stream import BYE_TIMEOUT, EventStream, Final
from pyprobes.engine.errors import ProbeError, SymbolNotFoundError
from pyprobes.engine.registry import own_thread

if TYPE_CHECKING:
    from pyprobes.attach.server import Agent
    from pyprobes.engine.probes import Probe
    from pyprobes.lang import ProbeSpec
    from pyprobes.output.aggregate import Aggregator, AggregatorConfig
    from pyprobes.output.records import Event
    from pyprobes.tracer import TraceSession
    from pyprobes.tracer.activations import Activations

AGENT_THREAD_NAME = "pyprobes-agent"
FLUSH_TIMEOUT = 10.0
#: Seconds a detach waits for handlers that were running when its probes went (a handler that
#: runs a ``:str`` of the program's may take long; past this its event is counted lost).
DETACH_WAIT = 1.0
#: Seconds a client with no probes may stay without a request before it is let go.
IDLE_TIMEOUT = 60.0
IDLE_TIMEOUT_ENV = "PYPROBES_AGENT_IDLE_TIMEOUT"
#: Functions one ``add`` may probe (a wildcard matching more is refused, nothing placed).
MAX_FUNCTIONS_PER_ADD = 2000
MAX_FUNCTIONS_ENV = "PYPROBES_AGENT_MAX_FUNCTIONS"

_log = logging.getLogger("pyprobes.agent")


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has data (or EOF, or an error) within ``timeout`` seconds."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(max(1, int(timeout * 1000) + 1)))
    except (OSError, ValueError):
        return True  # closed meanwhile: let recv say so


# --- the program's __main__ -------------------------------------------------------------------


def main_names() -> tuple[str, ...]:
    """The names the program's main module runs under (``__main__``, and X for ``-m X``)."""
    main = sys.modules.get("__main__")
    module_spec = getattr(main, "__spec__", None)
    name = getattr(module_spec, "name", None)
    if isinstance(name, str) and name != "__main__":
        return ("__main__", name)
    return ("__main__",)


def main_code() -> CodeType | None:
    """The module-level code of ``__main__`` if it is still running on some thread."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    ns = main.__dict__
    for top in sys._current_frames().values():
        f: FrameType | None = top
        while f is not None:
            if f.f_code.co_name == "<module>" and f.f_globals is ns:
                return f.f_code
            f = f.f_back
    return None


def _targets_main(spec: ProbeSpec) -> bool:
    from pyprobes.tracer.targets import module_matches

    t = spec.target
    if t.path is not None or t.module is None:
        return False
    return any(module_matches(t, n) for n in main_names())


# --- one client ------------------------------------------------------------------------------


@dataclass(eq=False)
class SpecEntry:
    """One spec a client added: its handle, its tracing session (``trace``), its switch."""

    handle: int
    spec: ProbeSpec
    trace: TraceSession | None = None  # its tracing session (the client's session is ours)
    enabled: bool = True
    listener: Callable[[str, str | None, CodeType], None] | None = None
    aggregator: Aggregator | None = None  # aggregates only (no events): sent every round
    spans: bool = False  # events whose returns carry their activation links (--otlp)


def _aggregate_config(fields: object) -> AggregatorConfig | None:
    """The aggregations an ``add`` asked for (validated by the protocol), or None."""
    from pyprobes.output.aggregate import AggregatorConfig

    if not isinstance(fields, dict):
        return None
    lhist = fields.get("lhist")
    return AggregatorConfig(
        hist_field=fields.get("hist"),
        count=bool(fields.get("count") or fields.get("by")),
        by_field=fields.get("by"),
        stats_field=fields.get("stats"),
        lhist_field=None if lhist is None else lhist[0],
        lhist_bounds=None if lhist is None else (lhist[1], lhist[2], lhist[3]),
    )


def _probe_count(entry: SpecEntry) -> int:
    return len(entry.trace.probes()) if entry.trace is not None else 0


def _disable_new(entry: SpecEntry) -> None:
    """Import listener of a disabled wildcard spec: probes it placed on a new module are off."""
    trace = entry.trace
    if trace is None or entry.enabled:
        return
    for p in trace.probes():
        if not p.disabled:
            with contextlib.suppress(ProbeError):
                pyprobes.disable_kprobe(p)


class ClientSession:
    """One connection: its probes, its reader thread, and its stream (``attach.stream``:
    the event queue and the sender thread).

    One of these is used across threads. Be careful. The program's threads only ``put`` on
    ``stream.events`` (O(1), no lock, no I/O, no exception). The reader thread handles
    requests; the sender thread alone writes to the socket; ``close()`` may come from the
    reader, the sender, the server or ``stop()`` on any thread.
    """

    def __init__(self, agent: Agent, sock: socket.socket, n: int, peer: tuple[int, int, int]):
        self.agent = agent
        self.sock = sock
        self.n = n
        self.peer = peer
        self.name = ""
        self._lock = threading.Lock()
        self._specs: dict[int, SpecEntry] = {}
        self._next_handle = 1
        #: The activation table the client's ``spans`` specs share (made by the first one).
        self._activations: Activations | None = None
        #: True once closing began: no more requests, the stream ends when it has sent all.
        self.closed = False
        #: Closing with a bye: the sender waits for it, then ends.
        self.bye_coming = False
        base = f"{AGENT_THREAD_NAME}-client-{n}"
        self.reader = threading.Thread(target=self._read_loop, name=base, daemon=True)
        self.stream = EventStream(self, sock, f"{base}-send")
        self.sender = self.stream.thread

    def start(self) -> None:
        self.sender.start()
        self.reader.start()

    # -- hot path: the program's threads -------------------------------------------------

    def _emitter(self, entry: SpecEntry) -> Callable[[Event], None]:
        push = self.stream.events.put

        def emit(event: Event) -> None:
            if entry.enabled:
                push(event)

        return emit

    def specs(self) -> list[SpecEntry]:
        """The specs the client holds now (any thread that does not hold ``_lock``)."""
        with self._lock:
            return list(self._specs.values())

    # -- replies ------------------------------------------------------------------------

    def send(self, message: dict[str, object]) -> None:
        """Queue a message for the sender thread."""
        self.stream.send(message)

    def _reply(self, req: Request, **fields: object) -> None:
        self.send({"type": "ok", "re": req.id, **fields})

    def _error(self, code: str, message: str, re: int | None) -> None:
        self.send(error(code, message, re))

    # -- reader thread ------------------------------------------------------------------

    def _read_loop(self) -> None:
        with own_thread():  # the agent's calls are not the program's hits
            try:
                self._serve()
            except Exception:
                _log.exception("pyprobes agent: client %d failed", self.n)
            finally:
                self.close()
                self.agent._forget(self)
                with contextlib.suppress(OSError):
                    self.sock.close()

    def _serve(self) -> None:
        sock = self.sock
        reader = LineReader(MAX_LINE)
        greeted = False
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        sock.settimeout(HANDSHAKE_TIMEOUT)
        idle = self.agent.idle_timeout
        last = time.monotonic()  # of the last request: a client with no probes may idle
        while not self.closed:
            if greeted and not self._specs:
                left = last + idle - time.monotonic()
                if left <= 0:
                    self._finish(
                        {
                            "type": "bye",
                            "reason": f"this client held no probes and sent no request for"
                            f" {idle:g}s ({IDLE_TIMEOUT_ENV}): connect again when needed",
                        }
                    )
                    return
                if not _readable(sock, left):
                    continue
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = None
            except OSError:
                return
            if data == b"":
                return
            for line in reader.feed(data or b""):
                self.stream.wait_for_room()
                if line is None:
                    self._error(TOO_LARGE, f"message longer than {MAX_LINE} bytes: ignored", None)
                    continue
                if not line.strip():
                    continue
                try:
                    req = parse_request(line)
                except ProtocolError as exc:
                    self._error(exc.code, str(exc), request_id_of(line))
                    continue
                if not greeted:
                    if req.type != "hello":
                        self._error(
                            HANDSHAKE,
                            f'say hello first: {{"type": "hello", "version": {PROTOCOL_VERSION}}}',
                            req.id,
                        )
                        continue
                    version = req.fields["version"]
                    if version != PROTOCOL_VERSION:
                        self._finish(
                            error(
                                VERSION,
                                f"protocol version {version} is not spoken here: this agent"
                                f" (pyprobes {pyprobes.__version__}) speaks version"
                                f" {PROTOCOL_VERSION}; use the same pyprobes version on both"
                                " sides",
                                req.id,
                            )
                        )
                        return
                    greeted = True
                    last = time.monotonic()
                    self.name = str(req.fields.get("client", ""))
                    sock.settimeout(None)
                    self.send(self.agent.welcome(self, req.id))
                    continue
                if req.type == "detach":
                    self._detach(req)
                    return
                self._dispatch(req)
                last = time.monotonic()
            if not greeted and time.monotonic() >= deadline:
                self._finish(error(HANDSHAKE, "no hello within the handshake timeout", None))
                return

    def _dispatch(self, req: Request) -> None:
        try:
            if req.type == "hello":
                self._error(HANDSHAKE, "hello was said already", req.id)
            elif req.type == "add":
                self._add(req)
            elif req.type in ("remove", "enable", "disable"):
                self._switch(req)
            elif req.type == "list":
                self._reply(req, **self.agent.listing(self))
            elif req.type == "status":
                self._reply(req, probes=self._status_rows(), lost=self.stream.lost_message())
            elif req.type == "ping":
                self._reply(req)
        except ProtocolError as exc:
            self._error(exc.code, str(exc), req.id)
        except Exception as exc:
            _log.exception("pyprobes agent: %s request of client %d failed", req.type, self.n)
            self._error(INTERNAL, f"{req.type} failed inside the agent: {exc!r}", req.id)

    def _add(self, req: Request) -> None:
        from pyprobes.engine.errors import SpecError
        from pyprobes.lang import parse_spec

        texts: list[str] = req.fields["specs"]
        specs: list[ProbeSpec] = []
        for i, text in enumerate(texts, 1):
            try:
                specs.append(parse_spec(text))
            except SpecError as exc:
                raise ProtocolError(BAD_SPEC, f"spec {i} ({text!r}): {exc}") from None
            except Exception as exc:
                raise ProtocolError(
                    BAD_SPEC, f"spec {i} ({text!r}) cannot be parsed: {exc!r}"
                ) from None
        self._check_functions(specs)
        asked = req.fields.get("aggregate")
        config = _aggregate_config(asked)
        if isinstance(asked, dict) and "every" in asked:
            self.stream.round = min(self.stream.round, float(asked["every"]))
        with self._lock:
            if self.closed:
                return
            if len(self._specs) + len(specs) > MAX_SPECS_PER_CLIENT:
                raise ProtocolError(
                    LIMIT,
                    f"a client may hold {MAX_SPECS_PER_CLIENT} specs; it has {len(self._specs)}"
                    f" and adds {len(specs)}: remove some first",
                )
            placed = sum(_probe_count(e) for e in self._specs.values())
            new: list[SpecEntry] = []
            try:
                for i, spec in enumerate(specs, 1):
                    entry = SpecEntry(
                        self._next_handle + len(new), spec, spans=req.fields.get("spans") is True
                    )
                    if config is not None:
                        from pyprobes.output.aggregate import Aggregator

                        entry.aggregator = Aggregator.from_config(config)
                    self._arm(entry)
                    new.append(entry)
                    placed += _probe_count(entry)
                    if placed > MAX_PROBES_PER_CLIENT:
                        raise ProtocolError(
                            LIMIT,
                            f"spec {i} ({spec.text or spec}) takes the client past"
                            f" {MAX_PROBES_PER_CLIENT} probes: narrow its wildcard",
                        )
            except ProbeError as exc:
                self._stop_entries(new)
                if isinstance(exc, ProtocolError):
                    raise
                raise ProtocolError(
                    PROBE_ERROR, f"spec {i} ({spec.text or spec}): {exc} [{exc.slug}]"
                ) from None
            except BaseException:
                self._stop_entries(new)
                raise
            for entry in new:
                self._specs[entry.handle] = entry
            self._next_handle += len(new)
        self._reply(req, probes=[self._describe(e) for e in new])

    def _check_functions(self, specs: list[ProbeSpec]) -> None:
        """Refuse an add whose wildcards match more functions than one add may probe, before
        anything is placed: registering thousands under busy threads takes the agent long."""
        from pyprobes.tracer.targets import count_matches

        limit = self.agent.max_functions
        main = (
            main_code() if any(s.target.has_wildcards and _targets_main(s) for s in specs) else None
        )
        names = main_names()
        total = 0
        for i, spec in enumerate(specs, 1):
            n = count_matches(spec, main, names)
            total += n
            if total > limit:
                before = f" (with the specs before it, {total:,})" if total != n else ""
                raise ProtocolError(
                    LIMIT,
                    f"spec {i} ({spec.text or spec}) matches {n:,} functions{before}, and one add"
                    f" may probe at most {limit:,} ({MAX_FUNCTIONS_ENV} in the target):"
                    " narrow its wildcard",
                )

    def _arm(self, entry: SpecEntry) -> None:
        from pyprobes.tracer import TraceSession

        spec = entry.spec
        agg = entry.aggregator  # with one, only aggregations: programs in the core if they can
        if entry.spans:
            # Spans (attach --otlp): each return linked to its enclosing activation in one
            # table for all the client's spans specs, so they nest across; recorded in the
            # client's ring by a program where one can (its JSON line has the link), else the
            # Python path.
            if self._activations is None:
                from pyprobes.tracer.activations import Activations

                self._activations = Activations()
            trace = TraceSession(
                [spec],
                self._emitter(entry),
                spans=True,
                activations=self._activations,
                records=self.stream.records(),
            )
        else:
            # Events: recorded in the client's ring by probe programs where they can (written
            # as JSON in the core), else through the event queue (tracer.records, as run).
            records = self.stream.records() if agg is None else None
            trace = TraceSession(
                [spec], self._emitter(entry), agg, events=agg is None, records=records
            )
        entry.trace = trace
        trace.arm()
        if _targets_main(spec):
            code = main_code()
            if code is None:
                trace.stop()
                raise SymbolNotFoundError(
                    "the program's __main__ module code is no longer running, so its functions"
                    " cannot be found: probe them by file and line (path/to/script.py:LINE)"
                )
            trace.arm_main(code, main_names())

    def _describe(self, entry: SpecEntry) -> dict[str, object]:
        probes = entry.trace.probes() if entry.trace is not None else []
        return {
            "handle": entry.handle,
            "spec": str(entry.spec),
            "event": entry.spec.event,
            "enabled": entry.enabled,
            "probes": len(probes),
            "pending": sum(1 for p in probes if p.pending),
        }

    def _status_rows(self) -> list[dict[str, object]]:
        rows = []
        for entry in self.specs():
            row = self._describe(entry)
            probes = entry.trace.probes() if entry.trace is not None else []
            row["hits"] = sum(p.nhit for p in probes)
            row["misses"] = sum(p.nmissed for p in probes)
            rows.append(row)
        return rows

    def _switch(self, req: Request) -> None:
        handles: list[int] = list(dict.fromkeys(req.fields["handles"]))
        with self._lock:
            missing = [h for h in handles if h not in self._specs]
            if missing:
                mine = ", ".join(map(str, self._specs)) or "none"
                raise ProtocolError(
                    NO_SUCH_PROBE,
                    f"no probe with handle {missing[0]} in this session (its handles: {mine})",
                )
            for h in handles:
                entry = self._specs[h]
                if req.type == "remove":
                    del self._specs[h]
                    self._stop_entries([entry])
                elif req.type == "enable":
                    self._enable(entry)
                else:
                    self._disable(entry)
        self._reply(req, handles=handles)

    def _enable(self, entry: SpecEntry) -> None:
        if entry.listener is not None:
            pyprobes.remove_import_listener(entry.listener)
            entry.listener = None
        entry.enabled = True
        if entry.trace is not None:
            for p in entry.trace.probes():
                if p.disabled:
                    with contextlib.suppress(ProbeError):  # a GONE probe stays off
                        pyprobes.enable_kprobe(p)

    def _disable(self, entry: SpecEntry) -> None:
        entry.enabled = False
        if entry.trace is None:
            return
        for p in entry.trace.probes():
            if not p.disabled:
                pyprobes.disable_kprobe(p)
        if entry.spec.target.has_wildcards and entry.listener is None:
            # Runs after the session's own listener, which placed the new probes.
            entry.listener = lambda _name, _origin, _code: _disable_new(entry)
            pyprobes.add_import_listener(entry.listener)

    def _stop_entries(self, entries: list[SpecEntry]) -> None:
        for entry in entries:
            if entry.listener is not None:
                pyprobes.remove_import_listener(entry.listener)
                entry.listener = None
            if entry.trace is not None:
                try:
                    entry.trace.stop()
                except Exception:
                    _log.exception("pyprobes agent: removing the probes of %s failed", entry.spec)

    def _detach(self, req: Request) -> None:
        from pyprobes.tracer.hits import wait_for_handlers

        with self._lock:
            entries = list(self._specs.values())
            self._stop_entries(entries)
        # A handler that was already running when its probe went may still emit: wait until
        # each has returned (bounded), so that the summary counts its event.
        wait_for_handlers(DETACH_WAIT)
        self.stream.events.accepting = False
        self._finish({"type": "detached", "re": req.id}, entries)

    def _finish(
        self, message: dict[str, object] | None, entries: list[SpecEntry] | None = None
    ) -> None:
        """Have the sender flush what is queued, send ``message`` and close; wait for it."""
        self.stream.finish(Final(message, entries or []))
        if threading.current_thread() is not self.sender:
            self.sender.join(FLUSH_TIMEOUT)

    # -- closing ------------------------------------------------------------------------

    def close(self, bye: str | None = None) -> None:
        """Remove the client's probes and end its connection (idempotent, any thread)."""
        if self.begin_close(bye):
            self.sender.join(BYE_TIMEOUT)
        self.end_close()

    def begin_close(self, bye: str | None = None) -> bool:
        """Remove the probes; queue ``bye`` last. True if the sender should be waited for."""
        with self._lock:
            if self.closed:
                return False
            wait = bye is not None and self.sender.is_alive()
            # (set with closed: a sender that wakes while the probes are being removed must
            # not end before the bye is queued, or the client never hears why it ended)
            self.bye_coming = wait
            self.closed = True
            self.stream.events.accepting = False
            self._stop_entries(list(self._specs.values()))
        if wait:
            self.stream.finish(Final({"type": "bye", "reason": bye}))
        self.stream.events.wake.set()
        return wait and threading.current_thread() is not self.sender

    def end_close(self) -> None:
        """Shut the connection down: wakes the reader and a sender blocked on a stalled peer."""
        self.stream.wake_all()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def forget_in_child(self) -> None:
        """After fork, in the child: drop the connection (the parent's) and its probes."""
        self._lock = threading.Lock()
        self.closed = True
        self.stream.forget_in_child()
        with contextlib.suppress(OSError):
            self.sock.close()  # our copy of the descriptor only: no shutdown, the parent serves it
        for entry in list(self._specs.values()):
            if entry.listener is not None:
                pyprobes.remove_import_listener(entry.listener)
            if entry.trace is not None:
                _unregister_in_child(entry.trace)


def _unregister_in_child(trace: TraceSession) -> None:
    # Not trace.stop(): its lock may have been held by a thread that does not exist in the
    # child. The engine's registry lock is re-created after fork, so unregistering is safe.
    with contextlib.suppress(Exception):
        pyprobes.remove_import_listener(trace._on_import)
    probes: list[Probe] = trace.probes()
    for p in probes:
        with contextlib.suppress(Exception):
            if isinstance(p, pyprobes.Kretprobe):
                pyprobes.unregister_kretprobe(p)
            elif isinstance(p, pyprobes.Jprobe):
                pyprobes.unregister_jprobe(p)
            elif isinstance(p, pyprobes.Kprobe):
                pyprobes.unregister_kprobe(p)
