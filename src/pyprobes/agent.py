"""This process's attach agent: ``pyprobes.agent.start()`` and ``stop()``.

``start()`` serves a Unix socket (``$XDG_RUNTIME_DIR/pyprobes/<pid>.sock``, else
``<tempdir>/pyprobes-<uid>/<pid>.sock``) from a daemon thread, so that ``pyprobes attach
PID``, ``pyprobes list PID`` and ``pyprobes ps`` can reach the process while it runs. The
same happens with ``PYPROBES_AGENT=1`` in the environment or ``pyprobes run --listen``.
Probes that clients add are theirs and go when they detach; ``stop()`` (also run at exit)
removes any that remain and the socket. See ``pyprobes.attach`` for the protocol.
"""

from __future__ import annotations

from pyprobes.attach.server import current, is_running, socket_path, start, stop

__all__ = ["current", "is_running", "socket_path", "start", "stop"]
