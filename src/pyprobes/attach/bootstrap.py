"""Starting an agent in a process that runs none, with ``sys.remote_exec`` (CPython 3.14+).

PEP 768 lets a process ask another CPython to run a script file at its main thread's next
safe point: ``sys.remote_exec(pid, path)`` returns at once, with no completion signal. The
script runs in a fresh namespace, and anything it raises is printed on the target's stderr,
so ours catches everything and reports through a status file next to it instead:
``ok SOCKET`` once the agent listens, ``error TEXT`` otherwise. The agent it starts stops by
itself when its last client leaves (``idle_exit``), so an attach leaves no thread behind.

Requirements, each checked first so that a failure is one actionable line:

- this interpreter has ``sys.remote_exec`` (3.14+) and remote debugging is not disabled
  (``PYTHON_DISABLE_REMOTE_DEBUG``, ``-X disable_remote_debug``, or a build without it);
- the target runs the same major.minor version (read from ``/proc/PID/exe`` and its maps);
- ptrace is allowed: the same uid or root, and Yama's ``kernel.yama.ptrace_scope`` is 0
  (1 needs root or CAP_SYS_PTRACE, 2 root, 3 forbids it);
- the target's main thread runs Python code (one blocked in a C call never reaches a safe
  point: then the attach times out, and the script is emptied so that it does nothing if the
  target reaches it later, without the error a deleted script would print there).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from pyprobes.attach.errors import (
    AttachPermissionError,
    NoAgentError,
    NoSuchProcessError,
)
from pyprobes.attach.paths import pid_alive, process_uid

REMOTE_EXEC_SINCE = (3, 14)
BOOTSTRAP_TIMEOUT = 10.0
CAP_SYS_PTRACE = 19
_VERSION_IN_NAME = re.compile(r"(?:^|/)(?:lib)?python(3)\.(\d+)")

_SCRIPT = """\
# pyprobes bootstrap: run once by sys.remote_exec in process {pid} to start its attach agent.
# It runs in a namespace of its own and reports to the status file, never to the program.
def _pyprobes_bootstrap(status, fallback_path):
    import sys

    def report(text):
        try:
            with open(status + ".tmp", "w", encoding="utf-8") as f:
                f.write(text)
            import os

            os.replace(status + ".tmp", status)
        except OSError:
            pass

    try:
        try:
            import pyprobes.agent as agent
        except ImportError:
            if fallback_path not in sys.path:
                sys.path.append(fallback_path)
            import pyprobes.agent as agent
        report("ok " + agent.start(idle_exit=True))
    except Exception as exc:
        report("error " + type(exc).__name__ + ": " + str(exc))


_pyprobes_bootstrap({status!r}, {fallback!r})
"""

_INERT = "# pyprobes: this attach was given up; nothing to do.\n"


def bootstrap_script(pid: int, status_path: str, fallback_path: str) -> str:
    """The text of the script the target runs (it compiles; it only starts the agent)."""
    return _SCRIPT.format(pid=pid, status=status_path, fallback=fallback_path)


def _pyprobes_parent() -> str:
    """The directory holding the ``pyprobes`` package this client runs from."""
    import pyprobes

    return os.path.dirname(os.path.dirname(os.path.abspath(pyprobes.__file__)))


def version_text(version: tuple[int, int]) -> str:
    """``3.14`` for (3, 14)."""
    return f"{version[0]}.{version[1]}"


def target_python_version(pid: int, proc: str = "/proc") -> tuple[int, int] | None:
    """The major.minor of the CPython that ``pid`` runs, from its executable or libpython."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        names.append(os.readlink(f"{proc}/{pid}/exe"))
    with contextlib.suppress(OSError), open(f"{proc}/{pid}/maps", encoding="utf-8") as f:
        for line in f:
            if "python3." in line:
                names.append(line.rsplit(" ", 1)[-1].strip())
    for name in names:
        m = _VERSION_IN_NAME.search(name)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def ptrace_scope(proc: str = "/proc") -> int | None:
    """Yama's ``kernel.yama.ptrace_scope`` (None without Yama)."""
    try:
        with open(f"{proc}/sys/kernel/yama/ptrace_scope", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def has_cap_sys_ptrace(proc: str = "/proc") -> bool:
    """Whether this process holds CAP_SYS_PTRACE in its effective set."""
    try:
        with open(f"{proc}/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def remote_exec_problem(
    pid: int,
    *,
    sys_module: ModuleType | Any = sys,
    proc: str = "/proc",
    euid: int | None = None,
) -> str | None:
    """Why ``sys.remote_exec`` cannot start an agent in ``pid`` (one line), or None."""
    info = sys_module.version_info
    mine = (info[0], info[1])
    if not hasattr(sys_module, "remote_exec"):
        return (
            f"this pyprobes runs on Python {version_text(mine)}, and starting an agent in a"
            " running process needs CPython 3.14+ (sys.remote_exec)"
        )
    enabled = getattr(sys_module, "is_remote_debug_enabled", None)
    if enabled is not None and not enabled():
        return (
            "remote debugging is disabled in this interpreter (PYTHON_DISABLE_REMOTE_DEBUG,"
            " -X disable_remote_debug, or a build without it)"
        )
    theirs = target_python_version(pid, proc)
    if theirs is not None and theirs != mine:
        return (
            f"process {pid} runs Python {version_text(theirs)} but this pyprobes runs on"
            f" {version_text(mine)}: sys.remote_exec needs the same version; run"
            f" 'python{version_text(theirs)} -m pyprobes attach {pid}'"
        )
    me = os.geteuid() if euid is None else euid
    owner = process_uid(pid, proc)
    if owner is not None and me not in (owner, 0):
        return (
            f"process {pid} belongs to uid {owner} and you are uid {me}: run pyprobes as"
            " that user or as root"
        )
    scope = ptrace_scope(proc)
    privileged = me == 0 or has_cap_sys_ptrace(proc)
    if scope == 3:
        return "ptrace is disabled on this system (kernel.yama.ptrace_scope=3)"
    if scope == 2 and not privileged:
        return "only root may ptrace here (kernel.yama.ptrace_scope=2): run pyprobes as root"
    if scope == 1 and not privileged:
        return (
            "kernel.yama.ptrace_scope=1 lets only a parent process ptrace: run pyprobes as"
            " root (sudo -E), give its python CAP_SYS_PTRACE, or set the sysctl to 0"
        )
    return None


def how_to_start_agent(pid: int) -> str:
    """The ways to give a process an agent, for error messages."""
    return (
        f"start it with PYPROBES_AGENT=1 in its environment (pyprobes installed there), with"
        f" 'pyprobes run --listen', or call pyprobes.agent.start() in it; on CPython 3.14+"
        f" 'pyprobes attach {pid}' starts one itself"
    )


def _read_status(status: Path) -> str | None:
    try:
        return status.read_text(encoding="utf-8")
    except OSError:
        return None


def inject(
    pid: int,
    *,
    timeout: float = BOOTSTRAP_TIMEOUT,
    sys_module: ModuleType | Any = sys,
    proc: str = "/proc",
) -> Path:
    """Start an agent in ``pid`` with ``sys.remote_exec``; returns its socket path."""
    if not pid_alive(pid):
        raise NoSuchProcessError(f"no process {pid}")
    problem = remote_exec_problem(pid, sys_module=sys_module, proc=proc)
    if problem is not None:
        raise NoAgentError(
            f"process {pid} runs no pyprobes agent and none can be started in it: {problem};"
            f" or {how_to_start_agent(pid)}"
        )
    workdir = Path(tempfile.mkdtemp(prefix="pyprobes-bootstrap-"))
    script = workdir / "bootstrap.py"
    status = workdir / "status"
    finished = False
    try:
        script.write_text(bootstrap_script(pid, str(status), _pyprobes_parent()), "utf-8")
        owner = process_uid(pid, proc)
        if os.geteuid() == 0 and owner not in (None, 0):
            assert owner is not None
            # The target must read the script and write its status as its own user.
            os.chown(workdir, owner, -1)
            os.chown(script, owner, -1)
        try:
            sys_module.remote_exec(pid, os.fspath(script))
        except PermissionError as exc:
            finished = True
            raise AttachPermissionError(
                f"not allowed to ptrace process {pid} ({exc.strerror or exc}): run pyprobes as"
                f" its user with ptrace allowed, or as root; or {how_to_start_agent(pid)}"
            ) from None
        except ProcessLookupError:
            finished = True
            raise NoSuchProcessError(f"no process {pid}") from None
        except (RuntimeError, OSError, ValueError) as exc:
            finished = True
            raise NoAgentError(
                f"sys.remote_exec could not reach process {pid} ({exc}): is it CPython"
                f" {version_text((sys_module.version_info[0], sys_module.version_info[1]))}"
                f" with remote debugging enabled? Or {how_to_start_agent(pid)}"
            ) from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = _read_status(status)
            if text is not None:
                finished = True
                if text.startswith("ok "):
                    return Path(text[3:].strip())
                raise NoAgentError(
                    f"the bootstrap ran in process {pid} but its agent did not start:"
                    f" {text.removeprefix('error ').strip()}"
                )
            if not pid_alive(pid):
                finished = True
                raise NoSuchProcessError(f"process {pid} exited during the attach")
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            script.write_text(_INERT, "utf-8")
        raise NoAgentError(
            f"process {pid} did not run the bootstrap within {timeout:g}s: its main thread"
            " must be running Python code to reach a safe point (one blocked in a C call or"
            f" a long sleep never does); or {how_to_start_agent(pid)}"
        )
    finally:
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)


__all__ = [
    "BOOTSTRAP_TIMEOUT",
    "REMOTE_EXEC_SINCE",
    "bootstrap_script",
    "has_cap_sys_ptrace",
    "how_to_start_agent",
    "inject",
    "ptrace_scope",
    "remote_exec_problem",
    "target_python_version",
]
