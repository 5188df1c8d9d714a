"""The errors of attaching: one base class, each subclass also the matching builtin.

Every message is one actionable line: what went wrong and what to do about it.
"""

from __future__ import annotations

from pyprobes.engine.errors import ProbeError


class AttachError(ProbeError, RuntimeError):
    """Attaching to a process, or talking to its agent, failed."""

    slug = "attach-failed"


class NoSuchProcessError(AttachError, ProcessLookupError):
    """The pid names no running process."""

    slug = "no-such-process"


class NoAgentError(AttachError, LookupError):
    """The process runs no pyprobes agent, and none could be started in it."""

    slug = "no-agent"


class NotPythonError(NoAgentError):
    """The process is not a CPython program: no agent can serve in it."""

    slug = "not-python"


class AttachPermissionError(AttachError, PermissionError):
    """The process or its agent belongs to another user, or ptrace is not allowed."""

    slug = "attach-permission"


class ProtocolError(AttachError, ValueError):
    """A message broke the attach protocol; ``code`` is the protocol's error code."""

    slug = "protocol"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteError(AttachError):
    """The agent answered a request with an error (a bad spec, a symbol not found, ...)."""

    slug = "remote-error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AgentGoneError(AttachError, ConnectionError):
    """The connection to the agent ended: the process exited or its agent stopped."""

    slug = "agent-gone"


class ImpostorError(AttachError):
    """The socket named for a process is served by another process or another user."""

    slug = "impostor"
