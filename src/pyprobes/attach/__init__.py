"""Attaching to a live process: an agent inside it, clients outside, JSON lines between.

Kprobes are added to and removed from a running kernel, their state visible under debugfs;
this package gives a running Python service the same. The pieces, each importing downward
only (the engine and tracer know nothing of them):

- ``paths``: the per-user socket directory (0700; a private fallback when it is taken), one
  socket per pid (0600), stale ones cleaned up, never through a link;
- ``protocol``: message schema, validation, limits and the version handshake;
- ``server``: the agent's server thread in the target (accepting, credentials, lifecycle,
  fork), started by ``pyprobes.agent.start()``;
- ``session``: one session per client (its requests, its own probes, removed when it
  disconnects);
- ``stream``: each client's bounded event queue and the thread that sends to it (batches,
  losses);
- ``client``: connect, handshake, requests and the event stream, for the CLI;
- ``bootstrap``: starting an agent with ``sys.remote_exec`` on CPython 3.14+;
- ``gdbinject``: starting one on CPython 3.12/3.13, a pending call queued through gdb;
- ``autostart``: the ``PYPROBES_AGENT=1`` start-up hook behind ``pyprobes_agent.pth``.

The command line: ``pyprobes attach PID -e SPEC ...`` (same output and aggregation options
as ``pyprobes run``), ``pyprobes list PID`` and ``pyprobes ps``.
"""

from __future__ import annotations

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

__all__ = [
    "AgentGoneError",
    "AttachError",
    "AttachPermissionError",
    "ImpostorError",
    "NoAgentError",
    "NoSuchProcessError",
    "NotPythonError",
    "ProtocolError",
    "RemoteError",
]
