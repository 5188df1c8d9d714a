"""The agent: a daemon thread in the probed process serving its Unix socket to clients.

A client (``pyprobes attach``, ``pyprobes list``) connects, says hello, and adds probe specs;
its probes belong to its connection and are removed when it detaches or disconnects, cleanly
or not, as perf removes its kprobe events. Each client has its own probes and its own event
stream; events are streamed and clients aggregate them themselves (the target keeps no
per-client aggregation state, so its memory is bounded by the event queues).

The agent is in three parts: this server (accepting, credentials, lifecycle, fork), each
client's session (``attach.session``: its requests and probes) and each client's stream
(``attach.stream``: its event queue, the sender thread, batching, losses).

Threads (all daemon, so the agent never keeps the process alive):

- ``pyprobes-agent`` accepts connections, checks the peer's credentials (SO_PEERCRED: our
  uid or root) and starts the client's two threads;
- ``pyprobes-agent-client-N`` reads, validates and answers that client's requests
  (``ClientSession``);
- ``pyprobes-agent-client-N-send`` is the only thread that writes to that client's socket:
  replies, event batches, loss reports (``EventStream``). A stalled client blocks only it.

The probed program's threads only run ``EventQueue.put`` (``output.event_queue``): an O(1)
append to the client's bounded queue (or a counted drop when it is full), never a lock the
agent holds for long, never a syscall, never an exception. Probe hits on the agent's own
threads are not reported (``pyprobes.own_thread``): its JSON and socket work would otherwise
trace itself in a loop (a probe on ``json:dumps``).

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
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyprobes
from pyprobes.attach import paths
from pyprobes.attach.errors import AttachError
from pyprobes.attach.protocol import LIMIT, MAX_CLIENTS, PERMISSION, PROTOCOL_VERSION, encode, error
from pyprobes.attach.session import (
    AGENT_THREAD_NAME,
    IDLE_TIMEOUT,
    IDLE_TIMEOUT_ENV,
    MAX_FUNCTIONS_ENV,
    MAX_FUNCTIONS_PER_ADD,
    ClientSession,
    main_code,
    main_names,
)
from pyprobes.attach.stream import BYE_TIMEOUT, EVENT_CAPACITY
from pyprobes.engine.registry import own_thread

MAX_ARGV = 32
MAX_ARG_CHARS = 256

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


def _send_now(sock: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(encode(message), socket.MSG_NOSIGNAL)


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


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
        self._clients: dict[int, ClientSession] = {}
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
                client = ClientSession(self, conn, n, peer)
                self._clients[n] = client
        if full:
            message = f"this agent serves {MAX_CLIENTS} clients already: detach one first"
            _send_now(conn, error(LIMIT, message))
        if client is None:
            _close_quietly(conn)
            return
        client.start()

    def _forget(self, client: ClientSession) -> None:
        with self._lock:
            if self._clients.get(client.n) is client:
                del self._clients[client.n]
            idle = self.idle_exit and not self._clients and not self._stopping
        if idle:
            _stop_agent(self)  # started by a bootstrap: leave no thread behind once unused

    def clients(self) -> list[ClientSession]:
        """The connected clients."""
        with self._lock:
            return list(self._clients.values())

    def welcome(self, client: ClientSession, re: int | None) -> dict[str, object]:
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

    def listing(self, asking: ClientSession | None = None) -> dict[str, Any]:
        """The process's probe listing, each probe with the client that owns it (if any);
        ``clients`` counts the clients other than ``asking``."""
        from pyprobes.engine.listing import probe_record

        owners: dict[int, dict[str, object]] = {}
        for c in self.clients():
            for entry in c.specs():
                if entry.trace is None:
                    continue
                for p in entry.trace.probes():
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
