"""The client side of the attach protocol: find the agent, connect, handshake, talk.

``AgentConnection.open(pid)`` finds the agent's socket (or starts an agent: through gdb on
CPython 3.12/3.13, with ``sys.remote_exec`` on 3.14+), connects and says hello; every failure
is an AttachError whose message says what to do. ``request()`` sends one request and returns
its reply, keeping the events and notices that arrive meanwhile for ``receive()``.
Single-threaded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyprobes
from pyprobes.attach import bootstrap, gdbinject, paths
from pyprobes.attach.errors import (
    AgentGoneError,
    AttachError,
    AttachPermissionError,
    ImpostorError,
    NoAgentError,
    NoSuchProcessError,
    NotPythonError,
    ProtocolError,
    RemoteError,
)
from pyprobes.attach.protocol import (
    BAD_MESSAGE,
    MAX_AGENT_LINE,
    PERMISSION,
    VERSION,
    LineReader,
    encode,
    hello,
)
from pyprobes.output import Event
from pyprobes.output.records import activation_from_json

CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 30.0

Message = dict[str, Any]


def _parent_pid(pid: int, proc: str = "/proc") -> int | None:
    """The parent of ``pid`` per /proc (None when it does not say)."""
    try:
        with open(f"{proc}/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _same_exe(a: int, b: int, proc: str = "/proc") -> bool:
    try:
        return os.readlink(f"{proc}/{a}/exe") == os.readlink(f"{proc}/{b}/exe")
    except OSError:
        return False


def _no_agent(pid: int, proc: str = "/proc") -> NoAgentError:
    """Why ``pid`` has no agent, as far as /proc tells: it is no CPython, or what its
    environment or its parent suggest."""
    from pyprobes.attach.autostart import ENV_VAR

    other = bootstrap.not_cpython(pid, proc)
    if other is not None:
        return NotPythonError(
            f"process {pid} is not a CPython process ({other}): pyprobes attaches only to"
            " CPython programs"
        )
    head = f"process {pid} runs no pyprobes agent (it has no agent socket)"
    if paths.process_environ(pid, proc).get(ENV_VAR) == "1":
        return NoAgentError(
            f"{head}, although its environment sets {ENV_VAR}=1: it is still starting (try"
            " again), or its agent failed to start (its stderr has a 'pyprobes' line saying"
            " why) or was stopped, or its python never ran the start-up hook (it was started"
            " with -S or -I, or pyprobes is not installed in that interpreter), or it was"
            " forked by a parent whose agent did not follow forks; restart it, or call"
            " pyprobes.agent.start() in it"
        )
    ppid = _parent_pid(pid, proc)
    forked = ppid is not None and ppid > 1 and _same_exe(pid, ppid, proc)
    if forked and ppid is not None and paths.find_socket(ppid, proc) is not None:
        return NoAgentError(
            f"{head}: it is a fork of process {ppid}, whose agent does not follow forks:"
            f" start that with {ENV_VAR}=1 or pyprobes.agent.start(follow_fork=True), or"
            f" attach to {ppid}"
        )
    return NoAgentError(
        f"process {pid} runs no pyprobes agent: {bootstrap.how_to_start_agent(pid)}"
    )


def _check_reachable(pid: int) -> None:
    if not paths.pid_alive(pid):
        raise NoSuchProcessError(f"no process {pid}")
    owner = paths.process_uid(pid)
    me = os.geteuid()
    if owner is not None and me not in (owner, 0):
        raise AttachPermissionError(
            f"process {pid} belongs to uid {owner} and you are uid {me}: run pyprobes as that"
            " user or as root"
        )


def locate(pid: int, *, start_agent: bool = True) -> Path:
    """The socket of the agent of ``pid``; start one if there is none (``start_agent``)."""
    if pid <= 0:
        raise NoSuchProcessError(f"{pid} is not a process id")
    path = paths.find_socket(pid)
    if path is not None:
        return path
    _check_reachable(pid)
    if bootstrap.not_cpython(pid) is not None:
        raise _no_agent(pid)
    if start_agent and hasattr(sys, "remote_exec"):
        return bootstrap.inject(pid)
    if start_agent and gdbinject.GDB_SINCE <= sys.version_info[:2] < gdbinject.GDB_UNTIL:
        return gdbinject.inject(pid)
    raise _no_agent(pid)


def _directory_owner(path: Path) -> int | None:
    try:
        return os.lstat(path.parent).st_uid
    except OSError:
        return None


def check_peer(sock: socket.socket, pid: int, path: Path, owner: int | None) -> None:
    """Raise ImpostorError unless the process listening on ``sock`` is ``pid`` itself,
    running as ``owner`` (the uid the socket's directory belongs to), per SO_PEERCRED."""
    try:
        peer_pid, peer_uid, _ = paths.peer_credentials(sock)
    except OSError as exc:
        raise ImpostorError(f"cannot tell who serves {path}: {exc}") from None
    if peer_pid != pid or (owner is not None and peer_uid != owner):
        raise ImpostorError(
            f"{path} is not the agent of process {pid}: it is served by pid {peer_pid} as uid"
            f" {peer_uid}{'' if owner is None else f' (its directory belongs to uid {owner})'};"
            " remove it"
        )


def connect_socket(pid: int, path: Path, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected socket to the agent at ``path``, checked to be served by ``pid`` as the
    owner of its directory (SO_PEERCRED); errors say what to do."""
    owner = _directory_owner(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except PermissionError:
        sock.close()
        owner = paths.process_uid(pid)
        who = f" (the process belongs to uid {owner})" if owner is not None else ""
        raise AttachPermissionError(
            f"permission denied on the agent socket {path}{who}: run pyprobes as the"
            " process's user or as root"
        ) from None
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        if not paths.pid_alive(pid):
            paths.remove_socket(path, owner)
            raise NoSuchProcessError(f"no process {pid} (its agent socket was stale)") from None
        if exc.errno == errno.ECONNREFUSED:
            paths.remove_socket(path, owner)  # nobody listens: left by an earlier process
        raise _no_agent(pid) from None
    except OSError as exc:
        sock.close()
        raise AttachError(
            f"cannot connect to the agent of process {pid} at {path}: {exc}"
        ) from None
    try:
        check_peer(sock, pid, path, owner)
    except BaseException:
        sock.close()
        raise
    return sock


def event_from_json(d: Mapping[str, Any]) -> Event | None:
    """An Event from its JSON record, or None if the record is malformed."""
    try:
        args = d["args"]
        if not isinstance(args, dict):
            return None
        event = Event(
            event=str(d["event"]),
            group=str(d["group"]),
            kind=str(d["kind"]),
            probe=str(d["probe"]),
            location=str(d["location"]),
            time_ns=int(d["time_ns"]),
            pid=int(d["pid"]),
            thread_id=int(d["thread_id"]),
            thread_name=str(d["thread_name"]),
            args=args,
            retval=d.get("retval"),
            exception=d.get("exception"),
            duration_ns=d.get("duration_ns"),
            site=str(d.get("site", "")),
            is_async=d.get("is_async") is True,
            activation=activation_from_json(d["activation"]) if "activation" in d else None,
        )
    except (KeyError, TypeError, ValueError):
        return None
    if event.duration_ns is not None and not isinstance(event.duration_ns, int):
        return None
    return event


class AgentConnection:
    """One connection to an agent. Not thread-safe: one thread uses it."""

    def __init__(self, sock: socket.socket, pid: int, path: Path) -> None:
        self.sock = sock
        self.pid = pid
        self.path = path
        self.welcome: Message = {}
        self._reader = LineReader(MAX_AGENT_LINE)
        self._lines: deque[bytes | None] = deque()
        self._pending: deque[Message] = deque()
        self._next_id = 1
        self._eof = False
        self.closed = False

    @classmethod
    def open(
        cls, pid: int, *, client: str = "", start_agent: bool = True, timeout: float = REPLY_TIMEOUT
    ) -> AgentConnection:
        """Find, connect and greet the agent of ``pid``."""
        path = locate(pid, start_agent=start_agent)
        conn = cls(connect_socket(pid, path), pid, path)
        try:
            conn.handshake(client or f"pyprobes {pyprobes.__version__}", timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- low level ----------------------------------------------------------------------

    def send(self, message: Mapping[str, object]) -> None:
        """Send one message."""
        try:
            self.sock.sendall(encode(message), socket.MSG_NOSIGNAL)
        except OSError as exc:
            raise AgentGoneError(self._gone_text(f"sending failed: {exc}")) from None

    def _gone_text(self, detail: str = "") -> str:
        alive = paths.pid_alive(self.pid)
        what = "its agent stopped" if alive else "the process exited"
        return f"lost the connection to process {self.pid}: {what}" + (
            f" ({detail})" if detail else ""
        )

    def _fill(self, timeout: float | None) -> bool:
        """Read what arrives within ``timeout``; False on timeout. Raises AgentGoneError at EOF."""
        if self._eof:
            raise AgentGoneError(self._gone_text())
        if timeout is not None:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
            if not ready:
                return False
        try:
            self.sock.settimeout(None)
            data = self.sock.recv(1 << 20)
        except OSError as exc:
            self._eof = True
            raise AgentGoneError(self._gone_text(str(exc))) from None
        if not data:
            self._eof = True
            raise AgentGoneError(self._gone_text())
        self._lines.extend(self._reader.feed(data))
        return True

    def _next_line_message(self) -> Message | None:
        while self._lines:
            line = self._lines.popleft()
            if line is None:
                raise ProtocolError(
                    BAD_MESSAGE, f"the agent sent a line longer than {MAX_AGENT_LINE} bytes"
                )
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise ProtocolError(BAD_MESSAGE, "the agent sent a line that is not JSON") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise ProtocolError(BAD_MESSAGE, "the agent sent a message without a type")
            return msg
        return None

    def read_message(self, timeout: float | None) -> Message | None:
        """The next message from the socket (None on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._next_line_message()
            if msg is not None:
                return msg
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if not self._fill(remaining):
                return None

    # -- protocol -----------------------------------------------------------------------

    def handshake(self, client: str, timeout: float = REPLY_TIMEOUT) -> Message:
        """Say hello; the agent's welcome (who the process is)."""
        try:
            self.send(hello(client))
        except AgentGoneError:
            # A refusing agent answers and closes at once: its reason may be waiting unread.
            msg: Message | None = None
            with contextlib.suppress(AttachError):
                msg = self.read_message(1.0)
            if msg is not None and msg["type"] == "error":
                raise self._error(msg) from None
            raise
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise AttachError(
                    f"the agent of process {self.pid} did not answer within"
                    f" {round(timeout, 1):g}s: is the process stopped or hung?"
                )
            if msg["type"] == "welcome":
                self.welcome = msg
                return msg
            if msg["type"] == "error":
                raise self._error(msg)

    def _error(self, msg: Message) -> AttachError:
        code = str(msg.get("code", ""))
        text = f"process {self.pid}: {msg.get('message', 'error')}"
        if code == PERMISSION:
            return AttachPermissionError(text)
        if code == VERSION:
            return ProtocolError(VERSION, text)
        return RemoteError(code, text)

    def request(self, rtype: str, timeout: float = REPLY_TIMEOUT, **fields: object) -> Message:
        """Send a request and return its reply; RemoteError if the agent refused it.

        Events and notices that arrive before the reply are kept for ``receive()``.
        """
        rid = self._next_id
        self._next_id += 1
        self.send({"type": rtype, "id": rid, **fields})
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise AttachError(
                    f"the agent of process {self.pid} did not answer {rtype!r} within"
                    f" {round(timeout, 1):g}s"
                )
            if msg.get("re") == rid and msg["type"] in ("ok", "error", "detached"):
                if msg["type"] == "error":
                    raise self._error(msg)
                return msg
            if msg["type"] == "error" and msg.get("re") is None:
                raise self._error(msg)
            self._pending.append(msg)

    def receive(self, timeout: float | None) -> Message | None:
        """The next unasked message (events, lost, bye), or None after ``timeout``."""
        if self._pending:
            return self._pending.popleft()
        return self.read_message(timeout)

    def close(self) -> None:
        """Close the connection (the agent removes this session's probes)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> AgentConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "CONNECT_TIMEOUT",
    "REPLY_TIMEOUT",
    "AgentConnection",
    "check_peer",
    "connect_socket",
    "event_from_json",
    "locate",
]
