"""The agent: a daemon thread in the probed process serving its Unix socket to clients.

A client (``pyprobes attach``, ``pyprobes list``) connects, says hello, and adds probe specs;
its probes belong to its connection and are removed when it detaches or disconnects, cleanly
or not, as perf removes its kprobe events. Each client has its own probes and its own event
stream; events are streamed and clients aggregate them themselves (the target keeps no
per-client aggregation state, so its memory is bounded by the event queues).

Threads (all daemon, so the agent never keeps the process alive):

- ``pyprobes-agent`` accepts connections, checks the peer's credentials (SO_PEERCRED: our
  uid or root) and starts the client's two threads;
- ``pyprobes-agent-client-N`` reads, validates and answers that client's requests (it arms
  and removes its probes); it lets the client go once it has held no probes and sent no
  request for ``idle_timeout`` seconds, and refuses an ``add`` that would probe more than
  ``max_functions`` functions before placing any (both bound what a client can cost);
- ``pyprobes-agent-client-N-send`` is the only thread that writes to that client's socket:
  replies, event batches, loss reports. A stalled client blocks only this thread.

The probed program's threads only run ``_Client.push``: an O(1) append to the client's
bounded queue (or a counted drop when it is full), never a lock the agent holds for long,
never a syscall, never an exception. Probe hits on the agent's own threads are not reported:
its JSON and socket work would otherwise trace itself in a loop (a probe on ``json:dumps``).

Locks: the agent's ``_lock`` guards its client table; each client's ``_lock`` guards that
client's probe table and its closed flag. Neither is taken on the hot path, and neither is
ever held while taking the other (the agent copies its client list first).

After ``os.fork()`` the child forgets the parent's agent: it closes its copies of the
sockets (the parent keeps serving them; nothing is unlinked), removes the probes that the
parent's clients own (they belong to connections the child does not have), and serves only
if the agent was started with ``follow_fork=True`` (``PYPROBES_AGENT=1`` is), then on a socket
of its own, started within ``os.fork()`` with fresh locks and never an exception.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import platform
import secrets
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

import pyprobes
from pyprobes.attach import paths
from pyprobes.attach.errors import AttachError, ProtocolError
from pyprobes.attach.protocol import (
    BAD_SPEC,
    HANDSHAKE,
    HANDSHAKE_TIMEOUT,
    INTERNAL,
    LIMIT,
    MAX_CLIENTS,
    MAX_LINE,
    MAX_PROBES_PER_CLIENT,
    MAX_SPECS_PER_CLIENT,
    NO_SUCH_PROBE,
    PERMISSION,
    PROBE_ERROR,
    PROTOCOL_VERSION,
    TOO_LARGE,
    VERSION,
    LineReader,
    Request,
    encode,
    error,
    parse_request,
    request_id_of,
)
from pyprobes.engine.errors import ProbeError, SymbolNotFoundError
from pyprobes.engine.registry import own_thread

if TYPE_CHECKING:
    from pyprobes.engine.probes import Probe
    from pyprobes.output import Event
    from pyprobes.output.aggregate import Aggregator, AggregatorConfig
    from pyprobes.spec import ProbeSpec
    from pyprobes.tracer import TraceSession

AGENT_THREAD_NAME = "pyprobes-agent"
EVENT_CAPACITY = 16384
BATCH_EVENTS = 512
BATCH_BYTES = 1 << 20
BATCHES_PER_ROUND = 8
LOSS_REPORT_INTERVAL = 0.5
FLUSH_TIMEOUT = 10.0
BYE_TIMEOUT = 0.5
DETACH_GRACE = 4
MAX_ARGV = 32
MAX_QUEUED_REPLIES = 256
MAX_ARG_CHARS = 256
#: Seconds a client with no probes may stay without a request before it is let go.
IDLE_TIMEOUT = 60.0
IDLE_TIMEOUT_ENV = "PYPROBES_AGENT_IDLE_TIMEOUT"
#: Functions one ``add`` may probe (a wildcard matching more is refused, nothing placed).
MAX_FUNCTIONS_PER_ADD = 2000
MAX_FUNCTIONS_ENV = "PYPROBES_AGENT_MAX_FUNCTIONS"

_log = logging.getLogger("pyprobes.agent")

# --- peer credentials -------------------------------------------------------------------------

peer_credentials = paths.peer_credentials


def peer_allowed(peer_uid: int, owner_uid: int) -> bool:
    """Only the process's own user and root may attach."""
    return peer_uid in (owner_uid, 0)


def refusal_message(peer_uid: int, owner_uid: int) -> str:
    """What a refused client is told."""
    return (
        f"refused: this process belongs to uid {owner_uid} and only that user or root may"
        f" attach (you are uid {peer_uid}); run pyprobes as uid {owner_uid} or as root"
    )


def _env_number(name: str, default: float, integer: bool = False) -> float:
    """A positive number from the environment, else ``default`` (a bad value is warned
    about, never fatal: the agent runs inside the program)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(int(text)) if integer else float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        _log.warning(
            "pyprobes agent: %s=%r is not a positive number: using %g", name, text, default
        )
        return default
    return value


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has data (or EOF, or an error) within ``timeout`` seconds."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(max(1, int(timeout * 1000) + 1)))
    except (OSError, ValueError):
        return True  # closed meanwhile: let recv say so


def _send_now(sock: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(encode(message), socket.MSG_NOSIGNAL)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# --- the program's __main__ -------------------------------------------------------------------


def main_names() -> tuple[str, ...]:
    """The names the program's main module runs under (``__main__``, and X for ``-m X``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
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
class _Spec:
    """One spec a client added: its handle, its tracing session, its switch."""

    handle: int
    spec: ProbeSpec
    session: TraceSession | None = None
    enabled: bool = True
    listener: Callable[[str, str | None, CodeType], None] | None = None
    aggregator: Aggregator | None = None  # aggregates only (no events): sent every round


@dataclass(frozen=True)
class _Final:
    """Queued by the reader: flush the events, send the last message, close."""

    message: dict[str, object] | None
    entries: list[_Spec] = field(default_factory=list)


def _aggregate_config(fields: object) -> AggregatorConfig | None:
    """The aggregations an ``add`` asked for (validated by the protocol), or None."""
    from pyprobes.output.aggregate import AggregatorConfig

    if not isinstance(fields, dict):
        return None
    return AggregatorConfig(
        hist_field=fields.get("hist"),
        count=bool(fields.get("count") or fields.get("by")),
        by_field=fields.get("by"),
        stats_field=fields.get("stats"),
    )


def _probe_count(entry: _Spec) -> int:
    return len(entry.session.probes()) if entry.session is not None else 0


def _disable_new(entry: _Spec) -> None:
    """Import listener of a disabled wildcard spec: probes it placed on a new module are off."""
    session = entry.session
    if session is None or entry.enabled:
        return
    for p in session.probes():
        if not p.disabled:
            with contextlib.suppress(ProbeError):
                pyprobes.disable_kprobe(p)


class _Client:
    """One connection: its probes, its bounded event queue, its reader and sender threads.

    One of these is used across threads. Be careful. ``push()`` runs in probe handlers on
    any thread of the program: O(1), no lock, no I/O, no exception. The reader thread handles
    requests; the sender thread alone writes to the socket; ``close()`` may come from the
    reader, the sender, the server or ``stop()`` on any thread. Drops are counted per
    (producer thread, event) so that no two threads update one counter.
    """

    def __init__(self, agent: Agent, sock: socket.socket, n: int, peer: tuple[int, int, int]):
        self.agent = agent
        self.sock = sock
        self.n = n
        self.peer = peer
        self.name = ""
        self._lock = threading.Lock()
        self._specs: dict[int, _Spec] = {}
        self._next_handle = 1
        self._events: deque[Event] = deque()
        self._control: deque[bytes | _Final] = deque()
        self._wake = threading.Event()
        self._room = threading.Event()  # set by the sender when it took a reply off the queue
        self._capacity = EVENT_CAPACITY
        self._accepting = True
        self._closed = False
        self._bye_coming = False  # closing with a bye: the sender waits for it, then ends
        self._drops: dict[tuple[int, str], int] = {}
        self._sender_lost: dict[str, int] = {}
        self._reported_lost = 0
        self._round = LOSS_REPORT_INTERVAL  # seconds between sends; shorter when asked
        self.sent = 0
        base = f"{AGENT_THREAD_NAME}-client-{n}"
        self.reader = threading.Thread(target=self._read_loop, name=base, daemon=True)
        self.sender = threading.Thread(target=self._send_loop, name=f"{base}-send", daemon=True)

    def start(self) -> None:
        self.sender.start()
        self.reader.start()

    # -- hot path: the program's threads -------------------------------------------------

    def push(self, event: Event) -> None:
        """Queue an event for this client, or drop and count it; never blocks or raises."""
        try:
            q = self._events
            if self._accepting and len(q) < self._capacity:
                q.append(event)
                wake = self._wake
                if not wake.is_set():
                    wake.set()
                return
            key = (threading.get_ident(), event.event)
            drops = self._drops
            drops[key] = drops.get(key, 0) + 1
        except Exception:
            pass

    def _emitter(self, entry: _Spec) -> Callable[[Event], None]:
        push = self.push

        def emit(event: Event) -> None:
            if entry.enabled:
                push(event)

        return emit

    # -- counters -----------------------------------------------------------------------

    def lost_by_event(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, name), n in self._drops.copy().items():
            out[name] = out.get(name, 0) + n
        for name, n in self._sender_lost.copy().items():
            out[name] = out.get(name, 0) + n
        return out

    def _lose(self, name: str, n: int = 1) -> None:
        self._sender_lost[name] = self._sender_lost.get(name, 0) + n

    def specs(self) -> list[_Spec]:
        return list(self._specs.values())

    # -- replies ------------------------------------------------------------------------

    def send(self, message: dict[str, object]) -> None:
        """Queue a message for the sender thread."""
        self._control.append(encode(message))
        self._wake.set()

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
        while not self._closed:
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
                self._wait_for_room()
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

    def _wait_for_room(self) -> None:
        """Backpressure: a client that sends requests but reads no replies gets no more
        answers queued (the target's memory stays bounded); its requests wait in its socket."""
        while len(self._control) >= MAX_QUEUED_REPLIES and not self._closed:
            self._room.clear()
            if len(self._control) < MAX_QUEUED_REPLIES:
                break
            self._room.wait(0.5)

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
                self._reply(req, probes=self._status_rows(), lost=self._lost_message())
            elif req.type == "ping":
                self._reply(req)
        except ProtocolError as exc:
            self._error(exc.code, str(exc), req.id)
        except Exception as exc:
            _log.exception("pyprobes agent: %s request of client %d failed", req.type, self.n)
            self._error(INTERNAL, f"{req.type} failed inside the agent: {exc!r}", req.id)

    def _add(self, req: Request) -> None:
        from pyprobes.engine import SpecError
        from pyprobes.spec import parse_spec

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
            self._round = min(self._round, float(asked["every"]))
        with self._lock:
            if self._closed:
                return
            if len(self._specs) + len(specs) > MAX_SPECS_PER_CLIENT:
                raise ProtocolError(
                    LIMIT,
                    f"a client may hold {MAX_SPECS_PER_CLIENT} specs; it has {len(self._specs)}"
                    f" and adds {len(specs)}: remove some first",
                )
            placed = sum(_probe_count(e) for e in self._specs.values())
            new: list[_Spec] = []
            try:
                for i, spec in enumerate(specs, 1):
                    entry = _Spec(self._next_handle + len(new), spec)
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

    def _arm(self, entry: _Spec) -> None:
        from pyprobes.tracer import TraceSession

        spec = entry.spec
        agg = entry.aggregator  # with one, only aggregations: programs in the core if they can
        session = TraceSession([spec], self._emitter(entry), agg, events=agg is None)
        entry.session = session
        session.arm()
        if _targets_main(spec):
            code = main_code()
            if code is None:
                session.stop()
                raise SymbolNotFoundError(
                    "the program's __main__ module code is no longer running, so its functions"
                    " cannot be found: probe them by file and line (path/to/script.py:LINE)"
                )
            session.arm_main(code, main_names())

    def _describe(self, entry: _Spec) -> dict[str, object]:
        probes = entry.session.probes() if entry.session is not None else []
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
            probes = entry.session.probes() if entry.session is not None else []
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

    def _enable(self, entry: _Spec) -> None:
        if entry.listener is not None:
            pyprobes.remove_import_listener(entry.listener)
            entry.listener = None
        entry.enabled = True
        if entry.session is not None:
            for p in entry.session.probes():
                if p.disabled:
                    with contextlib.suppress(ProbeError):  # a GONE probe stays off
                        pyprobes.enable_kprobe(p)

    def _disable(self, entry: _Spec) -> None:
        entry.enabled = False
        if entry.session is None:
            return
        for p in entry.session.probes():
            if not p.disabled:
                pyprobes.disable_kprobe(p)
        if entry.spec.target.has_wildcards and entry.listener is None:
            # Runs after the session's own listener, which placed the new probes.
            entry.listener = lambda _name, _origin, _code: _disable_new(entry)
            pyprobes.add_import_listener(entry.listener)

    def _stop_entries(self, entries: list[_Spec]) -> None:
        for entry in entries:
            if entry.listener is not None:
                pyprobes.remove_import_listener(entry.listener)
                entry.listener = None
            if entry.session is not None:
                try:
                    entry.session.stop()
                except Exception:
                    _log.exception("pyprobes agent: removing the probes of %s failed", entry.spec)

    def _detach(self, req: Request) -> None:
        with self._lock:
            entries = list(self._specs.values())
            self._stop_entries(entries)
        # A handler that was already running when its probe went may still emit: give it a
        # few thread switch intervals to finish, so that the summary counts its event.
        time.sleep(DETACH_GRACE * sys.getswitchinterval())
        self._accepting = False
        self._finish({"type": "detached", "re": req.id}, entries)

    def _finish(
        self, message: dict[str, object] | None, entries: list[_Spec] | None = None
    ) -> None:
        """Have the sender flush what is queued, send ``message`` and close; wait for it."""
        self._control.append(_Final(message, entries or []))
        self._wake.set()
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
            if self._closed:
                return False
            wait = bye is not None and self.sender.is_alive()
            # (set with _closed: a sender that wakes while the probes are being removed must
            # not end before the bye is queued, or the client never hears why it ended)
            self._bye_coming = wait
            self._closed = True
            self._accepting = False
            self._stop_entries(list(self._specs.values()))
        if wait:
            self._control.append(_Final({"type": "bye", "reason": bye}))
        self._wake.set()
        return wait and threading.current_thread() is not self.sender

    def end_close(self) -> None:
        """Shut the connection down: wakes the reader and a sender blocked on a stalled peer."""
        self._wake.set()
        self._room.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def forget_in_child(self) -> None:
        """After fork, in the child: drop the connection (the parent's) and its probes."""
        self._lock = threading.Lock()
        self._closed = True
        self._accepting = False
        self._events = deque()
        self._control = deque()
        self._wake = threading.Event()
        self._room = threading.Event()
        with contextlib.suppress(OSError):
            self.sock.close()  # our copy of the descriptor only: no shutdown, the parent serves it
        for entry in list(self._specs.values()):
            if entry.listener is not None:
                pyprobes.remove_import_listener(entry.listener)
            if entry.session is not None:
                _unregister_in_child(entry.session)

    # -- sender thread ------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data, socket.MSG_NOSIGNAL)

    def _send_events(self, drain: bool, until: float | None = None) -> None:
        """Send queued events in batches: a few per round, all when draining. ``until``
        bounds a drain (a bye must reach the client before the program exits): what is
        still queued then is counted lost."""
        from pyprobes.output.sanitize import dumps

        q = self._events
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
            self._wake.set()

    def _send_aggregates(self, final: _Final | None) -> None:
        """What the aggregating specs gathered since the last round, in one message."""
        from pyprobes.output.aggregate_data import aggregator_data

        with self._lock:
            entries = list(self._specs.values())
        if final is not None:
            entries += [e for e in final.entries if e not in entries]
        data: list[dict[str, object]] = []
        for entry in entries:
            if entry.aggregator is None or entry.session is None:
                continue
            entry.session.collect()
            data += aggregator_data(entry.aggregator.snapshot_and_reset())
        if data:
            self._send(encode({"type": "aggregates", "aggregates": data}))

    def _lost_message(self) -> dict[str, object]:
        by_event = self.lost_by_event()
        return {"total": sum(by_event.values()), "by_event": by_event}

    def _report_losses(self) -> None:
        lost = self._lost_message()
        total = lost["total"]
        if total != self._reported_lost:
            assert isinstance(total, int)
            self._reported_lost = total
            self._send(encode({"type": "lost", **lost}))

    def _send_final(self, final: _Final) -> None:
        message = final.message
        if message is not None and message.get("type") == "detached":
            lost = self.lost_by_event()
            rows = []
            for entry in final.entries:
                if entry.session is None:
                    continue
                for row in entry.session.summary_rows(lost):
                    rows.append(
                        {
                            "event": row.event,
                            "hits": row.hits,
                            "misses": row.misses,
                            "lost": row.lost,
                            "filtered": row.filtered or 0,
                        }
                    )
            message = {**message, "summary": rows, "lost": self._lost_message()}
        if message is not None:
            self._send(encode(message))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _send_loop(self) -> None:
        with own_thread():  # the agent's calls are not the program's hits
            self._send_until_done()

    def _send_until_done(self) -> None:
        try:
            while True:
                self._wake.wait(self._round)
                self._wake.clear()
                final: _Final | None = None
                control = self._control
                while control:
                    item = control.popleft()
                    if isinstance(item, _Final):
                        final = item
                        break
                    self._send(item)
                    self._room.set()
                bye = final is not None and (final.message or {}).get("type") == "bye"
                until = time.monotonic() + BYE_TIMEOUT / 2 if bye else None
                self._send_events(drain=final is not None, until=until)
                self._send_aggregates(final)
                self._report_losses()
                if final is not None:
                    self._send_final(final)
                    return
                if self._closed and not control and not self._bye_coming:
                    return
        except OSError:
            pass  # the client is gone: the reader sees it too and cleans up
        except Exception:
            _log.exception("pyprobes agent: sending to client %d failed", self.n)
        finally:
            self._accepting = False
            if self.reader.is_alive() and not self._closed:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)


def _unregister_in_child(session: TraceSession) -> None:
    # Not session.stop(): its lock may have been held by a thread that does not exist in the
    # child. The engine's registry lock is re-created after fork, so unregistering is safe.
    with contextlib.suppress(Exception):
        pyprobes.remove_import_listener(session._on_import)
    probes: list[Probe] = session.probes()
    for p in probes:
        with contextlib.suppress(Exception):
            if isinstance(p, pyprobes.Kretprobe):
                pyprobes.unregister_kretprobe(p)
            elif isinstance(p, pyprobes.Jprobe):
                pyprobes.unregister_jprobe(p)
            elif isinstance(p, pyprobes.Kprobe):
                pyprobes.unregister_kprobe(p)


# --- the agent ---------------------------------------------------------------------------------


class Agent:
    """The socket server of one process. Use ``start()``/``stop()`` of this module."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        follow_fork: bool = False,
        idle_exit: bool = False,
        *,
        idle_timeout: float | None = None,
        max_functions: int | None = None,
    ):
        self.directory_arg = directory
        self.follow_fork = follow_fork
        self.idle_exit = idle_exit
        #: Seconds a client with no probes may go without a request (then it is let go).
        self.idle_timeout = (
            idle_timeout
            if idle_timeout is not None
            else _env_number(IDLE_TIMEOUT_ENV, IDLE_TIMEOUT)
        )
        #: Functions one add may probe.
        self.max_functions = (
            max_functions
            if max_functions is not None
            else int(_env_number(MAX_FUNCTIONS_ENV, MAX_FUNCTIONS_PER_ADD, integer=True))
        )
        self.pid = os.getpid()
        self.path: Path | None = None
        #: The private directory made because the usual one was taken (removed at stop).
        self.fallback: Path | None = None
        self.refused = 0
        self._lock = threading.Lock()
        self._clients: dict[int, _Client] = {}
        self._next_client = 1
        self._stopping = False
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        #: Whether start() first removes the sockets of dead processes from the directory.
        self.clean_on_start = True

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return not self._stopping and self._thread is not None and self._thread.is_alive()

    def start(self) -> Path:
        """Bind the socket (0600, in a private directory) and start the server thread."""
        directory = self._directory()
        if self.clean_on_start:
            paths.clean_stale(directory, keep=self.pid)
        path = paths.socket_path(self.pid, directory)
        try:
            paths.check_path_length(path)
        except AttachError:
            self._remove_fallback()
            raise
        tmp = directory / f".{self.pid}-{secrets.token_hex(4)}.tmp"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(tmp))
            os.chmod(tmp, 0o600)
            listener.listen(MAX_CLIENTS)
            os.replace(tmp, path)  # appears whole, already 0600 and listening
            st = os.stat(path)
        except OSError as exc:
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._remove_fallback()
            raise AttachError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        self._inode = (st.st_dev, st.st_ino)
        self._listener = listener
        self.path = path
        self._thread = threading.Thread(target=self._serve, name=AGENT_THREAD_NAME, daemon=True)
        self._thread.start()
        return path

    def _directory(self) -> Path:
        """The socket directory: the one asked for, else the usual one, else (when another
        user or a symlink holds that) a fresh private fallback, said in a warning."""
        if self.directory_arg is not None:
            return paths.ensure_private_dir(Path(self.directory_arg))
        usual = paths.runtime_dir()
        try:
            return paths.ensure_private_dir(usual)
        except AttachError as exc:
            fallback = paths.make_fallback_dir()
            self.fallback = fallback
            _log.warning("pyprobes agent: %s; listening in %s instead", exc, fallback)
            return fallback

    def _serve(self) -> None:
        with own_thread():  # the agent's calls are not the program's hits
            self._accept_loop()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping:
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                if self._stopping:
                    return
                _log.warning("pyprobes agent: accept failed: %s", exc)
                time.sleep(0.1)
                continue
            try:
                self._admit(conn)
            except Exception:
                _log.exception("pyprobes agent: admitting a client failed")
                _close_quietly(conn)

    def _admit(self, conn: socket.socket) -> None:
        try:
            peer = peer_credentials(conn)
        except OSError:
            _close_quietly(conn)
            return
        owner = os.geteuid()
        if not peer_allowed(peer[1], owner):
            self.refused += 1
            _log.warning(
                "pyprobes agent: refused a connection from uid %d (pid %d): only uid %d and"
                " root may attach to this process",
                peer[1],
                peer[0],
                owner,
            )
            _send_now(conn, error(PERMISSION, refusal_message(peer[1], owner)))
            _close_quietly(conn)
            return
        full = False
        client = None
        with self._lock:
            if len(self._clients) >= MAX_CLIENTS:
                full = True
            elif not self._stopping:
                n = self._next_client
                self._next_client += 1
                client = _Client(self, conn, n, peer)
                self._clients[n] = client
        if full:
            message = f"this agent serves {MAX_CLIENTS} clients already: detach one first"
            _send_now(conn, error(LIMIT, message))
        if client is None:
            _close_quietly(conn)
            return
        client.start()

    def _forget(self, client: _Client) -> None:
        with self._lock:
            if self._clients.get(client.n) is client:
                del self._clients[client.n]
            idle = self.idle_exit and not self._clients and not self._stopping
        if idle:
            _stop_agent(self)  # started by a bootstrap: leave no thread behind once unused

    def clients(self) -> list[_Client]:
        """The connected clients."""
        with self._lock:
            return list(self._clients.values())

    def welcome(self, client: _Client, re: int | None) -> dict[str, object]:
        """The answer to hello: who this process is."""
        argv = [str(a)[:MAX_ARG_CHARS] for a in sys.argv[:MAX_ARGV]]
        return {
            "type": "welcome",
            "re": re,
            "version": PROTOCOL_VERSION,
            "pid": self.pid,
            "uid": os.geteuid(),
            "python": platform.python_version(),
            "implementation": sys.implementation.name,
            "executable": sys.executable,
            "argv": argv,
            "pyprobes": pyprobes.__version__,
            "client": client.n,
            "clients": sum(1 for c in self.clients() if c is not client),
            "probes": len(pyprobes.registered_probes()),
        }

    def listing(self, asking: _Client | None = None) -> dict[str, Any]:
        """The process's probe listing, each probe with the client that owns it (if any);
        ``clients`` counts the clients other than ``asking``."""
        from pyprobes.engine.listing import probe_record

        owners: dict[int, dict[str, object]] = {}
        for c in self.clients():
            for entry in c.specs():
                if entry.session is None:
                    continue
                for p in entry.session.probes():
                    owners[id(p)] = {
                        "client": c.n,
                        "handle": entry.handle,
                        "event": entry.spec.event,
                    }
        records = []
        for p in pyprobes.registered_probes():
            r = probe_record(p)
            records.append(
                {
                    "address": r.address,
                    "kind": r.kind,
                    "symbol": r.symbol,
                    "offset": r.offset,
                    "line": r.line,
                    "module": r.module,
                    "flags": list(r.flags),
                    "hits": r.nhit,
                    "misses": r.nmissed,
                    "faults": r.nfault,
                    "where": r.where,
                    "owner": owners.get(id(p)),
                }
            )
        return {
            "pid": self.pid,
            "core": pyprobes.core_name(),
            "enabled": pyprobes.is_enabled(),
            "tool_id": pyprobes.tool_id(),
            "clients": sum(1 for c in self.clients() if c is not asking),
            "probes": records,
        }

    def stop(self, reason: str = "its agent was stopped") -> None:
        """Stop serving: every client's probes removed, the socket closed and unlinked;
        clients are told ``reason`` (a ``bye``)."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            clients = list(self._clients.values())
        listener = self._listener
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        self._unlink()
        self._remove_fallback()
        waits = [c for c in clients if c.begin_close(bye=reason)]
        deadline = time.monotonic() + BYE_TIMEOUT
        for c in waits:
            c.sender.join(max(0.0, deadline - time.monotonic()))
        for c in clients:
            c.end_close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _unlink(self) -> None:
        path = self.path
        if path is None or os.getpid() != self.pid:
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._inode:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _remove_fallback(self) -> None:
        if self.fallback is not None and os.getpid() == self.pid:
            with contextlib.suppress(OSError):
                os.rmdir(self.fallback)  # ours alone; fails harmlessly if not empty

    def forget_in_child(self) -> None:
        """After fork, in the child: serve nothing, unlink nothing, keep none of the probes."""
        self._stopping = True
        self._lock = threading.Lock()
        listener = self._listener
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()  # our descriptor only: the parent keeps listening
        for c in list(self._clients.values()):
            c.forget_in_child()
        self._clients = {}


# --- module API --------------------------------------------------------------------------------

_state_lock = threading.Lock()
_agent: Agent | None = None


def start(
    directory: str | os.PathLike[str] | None = None,
    *,
    follow_fork: bool = False,
    idle_exit: bool = False,
) -> str:
    """Start this process's agent (idempotent); returns its socket path.

    ``directory`` overrides the per-user socket directory. With ``follow_fork`` a child made
    by ``os.fork()`` starts an agent of its own (on its own socket) right after the fork;
    otherwise children do not serve. ``PYPROBES_AGENT=1`` starts it with ``follow_fork`` (the
    switch is for the whole program: pre-fork servers' workers become attachable); an
    explicit call does not follow forks unless asked, as the program chose where to serve.
    With ``idle_exit`` the agent stops once its last client has gone (the 3.14 bootstrap
    does not use it: its agent stays for the next client).
    Raises AttachError saying what to do when it cannot listen.
    """
    global _agent
    with _state_lock:
        agent = _agent
        if agent is not None and agent.running and agent.path is not None:
            return os.fspath(agent.path)
        agent = Agent(directory, follow_fork=follow_fork, idle_exit=idle_exit)
        path = agent.start()
        _agent = agent
        return os.fspath(path)


def stop(reason: str = "its agent was stopped") -> None:
    """Stop the agent: every client's probes removed, the socket unlinked (idempotent)."""
    global _agent
    with _state_lock:
        agent, _agent = _agent, None
    if agent is not None:
        agent.stop(reason)


def _stop_agent(agent: Agent) -> None:
    global _agent
    with _state_lock:
        if _agent is agent:
            _agent = None
    agent.stop()


def is_running() -> bool:
    """Whether this process serves an agent socket."""
    agent = _agent
    return agent is not None and agent.running


def socket_path() -> str | None:
    """The socket this process's agent listens on, if it runs."""
    agent = _agent
    return os.fspath(agent.path) if agent is not None and agent.path is not None else None


def current() -> Agent | None:
    """The running agent object, if any (for tests and tools)."""
    return _agent


def _at_exit() -> None:
    with contextlib.suppress(Exception):
        stop("the process is exiting")


def _after_fork_in_child() -> None:
    """In a fork child: forget the parent's agent; with ``follow_fork``, serve our own.

    Runs inside ``os.fork()`` in the child, where only the forking thread exists: it takes
    no lock that a vanished thread could hold (each is made anew first) and never raises.
    """
    global _agent, _state_lock
    try:
        _state_lock = threading.Lock()
        agent, _agent = _agent, None
    except Exception:
        return
    if agent is None:
        return
    with contextlib.suppress(Exception):
        agent.forget_in_child()
    if agent.follow_fork:
        _start_in_child(agent)


def _start_in_child(parent: Agent) -> None:
    """Start the fork child's agent on its own socket (its pid's path); a failure is one
    warning line, never an exception out of ``os.fork()``."""
    global _agent
    try:
        directory = parent.directory_arg
        if directory is None and parent.fallback is not None and parent.path is not None:
            directory = parent.path.parent  # the parent's private fallback: warned once there
        agent = Agent(
            directory,
            follow_fork=True,
            idle_exit=parent.idle_exit,
            idle_timeout=parent.idle_timeout,
            max_functions=parent.max_functions,
        )
        agent.clean_on_start = False  # the parent swept the directory; a child starts fast
        agent.start()
        _agent = agent
        _stop_with_multiprocessing(agent)
    except Exception as exc:
        with contextlib.suppress(Exception):
            _log.warning("pyprobes agent: the forked child could not start its agent: %s", exc)


def _stop_with_multiprocessing(agent: Agent) -> None:
    """A ``multiprocessing`` fork child clears atexit and ends with ``os._exit``: have it
    stop the agent (and unlink its socket) with its own exit functions instead."""
    util = sys.modules.get("multiprocessing.util")
    register = getattr(util, "register_after_fork", None)
    if register is None:
        return

    def finalize_at_exit(obj: Agent) -> None:
        # Run by Process._bootstrap after it cleared the finalizers: register ours now.
        with contextlib.suppress(Exception):
            if _agent is obj:
                util.Finalize(obj, _stop_quietly, args=(obj,), exitpriority=0)  # type: ignore[union-attr]

    with contextlib.suppress(Exception):
        register(agent, finalize_at_exit)


def _stop_quietly(agent: Agent) -> None:
    with contextlib.suppress(Exception):
        _stop_agent(agent)


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)

__all__ = [
    "AGENT_THREAD_NAME",
    "EVENT_CAPACITY",
    "Agent",
    "current",
    "is_running",
    "main_code",
    "main_names",
    "peer_allowed",
    "peer_credentials",
    "refusal_message",
    "socket_path",
    "start",
    "stop",
]
