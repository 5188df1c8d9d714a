"""Starting an agent in a process that runs none, with ``sys.remote_exec`` (CPython 3.14+).

PEP 768 lets a process ask another CPython to run a script file at its main thread's next
safe point: ``sys.remote_exec(pid, path)`` returns at once, with no completion signal. The
script runs in a fresh namespace, and anything it raises is printed on the target's stderr,
so ours catches everything and reports through a status file next to it instead:
``ok SOCKET`` once the agent listens, ``error TEXT`` otherwise. The agent it starts stays
(an idle daemon thread and its socket, gone at exit), so the next attach, ``list`` and ``ps``
find it without another ``remote_exec``.

Requirements, each checked first (or its failure mapped) so that it is one actionable line:

- this interpreter has ``sys.remote_exec`` (3.14+) and remote debugging is not disabled
  (``PYTHON_DISABLE_REMOTE_DEBUG``, ``-X disable-remote-debug``, or a build without it);
- the target allows it too: one started so answers ``RuntimeError: Remote debugging is not
  enabled in the remote process``, which only trying tells;
- the target runs the same major.minor version (read from ``/proc/PID/exe`` and its maps);
- ptrace is allowed: the same uid or root, and Yama's ``kernel.yama.ptrace_scope`` is 0
  (1 needs root or CAP_SYS_PTRACE, 2 root, 3 forbids it);
- the target's main thread runs Python code. CPython (3.14 and 3.15 alike) runs the script
  only in the main thread, when it next checks its eval breaker: a main thread blocked in a
  C call (``time.sleep``, a socket ``recv``, a lock, ``Thread.join``) is neither signalled
  nor interrupted, and runs it only when that call returns. So the wait is bounded
  (``PYPROBES_BOOTSTRAP_TIMEOUT``, default 10 s) and then says what the main thread is
  blocked in; the request stays queued in the target, which starts its agent when the call
  returns (and then removes the bootstrap's files), for a later attach to use.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from pyprobes.attach.errors import (
    AttachError,
    AttachPermissionError,
    NoAgentError,
    NoSuchProcessError,
)
from pyprobes.attach.paths import find_socket, pid_alive, process_environ, process_uid

REMOTE_EXEC_SINCE = (3, 14)
BOOTSTRAP_TIMEOUT = 10.0
TIMEOUT_ENV = "PYPROBES_BOOTSTRAP_TIMEOUT"
_WORKDIR_PREFIX = "pyprobes-bootstrap-"
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
        report("ok " + agent.start())
    except Exception as exc:
        report("error " + type(exc).__name__ + ": " + str(exc))
    # A client that stopped waiting left this mark: nobody will read the status, clean up.
    import os

    workdir = os.path.dirname(status)
    if os.path.exists(os.path.join(workdir, {given_up!r})):
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


_pyprobes_bootstrap({status!r}, {fallback!r})
"""

GIVEN_UP = "given-up"


def bootstrap_script(pid: int, status_path: str, fallback_path: str) -> str:
    """The text of the script the target runs (it compiles; it only starts the agent)."""
    return _SCRIPT.format(pid=pid, status=status_path, fallback=fallback_path, given_up=GIVEN_UP)


def _pyprobes_parent() -> str:
    """The directory holding the ``pyprobes`` package this client runs from."""
    import pyprobes

    return os.path.dirname(os.path.dirname(os.path.abspath(pyprobes.__file__)))


def version_text(version: tuple[int, int]) -> str:
    """``3.14`` for (3, 14)."""
    return f"{version[0]}.{version[1]}"


def target_python_version(pid: int, proc: str = "/proc") -> tuple[int, int] | None:
    """The major.minor of the CPython that ``pid`` runs: from its executable's name
    (``python3.N``, symlinks resolved by the kernel), else from a ``libpython3.N`` (or a
    ``pythonN.M/`` library directory) in its maps; None for other programs."""
    with contextlib.suppress(OSError):
        m = _VERSION_IN_NAME.match(os.path.basename(os.readlink(f"{proc}/{pid}/exe")))
        if m:
            return int(m.group(1)), int(m.group(2))
    with contextlib.suppress(OSError), open(f"{proc}/{pid}/maps", encoding="utf-8") as f:
        for line in f:
            if "python3." not in line:
                continue
            fields = line.split(maxsplit=5)  # the path (it may hold spaces) is the 6th
            m = _VERSION_IN_NAME.search(fields[5]) if len(fields) == 6 else None
            if m:
                return int(m.group(1)), int(m.group(2))
    return None


def not_cpython(pid: int, proc: str = "/proc") -> str | None:
    """Why ``pid`` is surely no CPython process (its executable, for a message), or None when
    it may be one or /proc does not tell us: no ``python`` in its executable's name nor in
    any file it maps (libpython, a ``pythonN.M/`` extension module)."""
    try:
        exe = os.readlink(f"{proc}/{pid}/exe")
        if "python" in os.path.basename(exe).lower():
            return None
        with open(f"{proc}/{pid}/maps", encoding="utf-8", errors="replace") as f:
            if any("python" in line.lower() for line in f):
                return None
    except OSError:
        return None
    return f"its executable is {exe.removesuffix(' (deleted)')} and it loads no libpython"


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
            " -X disable-remote-debug, or a build without it): run pyprobes without them"
        )
    theirs = target_python_version(pid, proc)
    if theirs is not None and theirs != mine:
        return (
            f"process {pid} runs Python {version_text(theirs)} but this pyprobes runs on"
            f" {version_text(mine)}: sys.remote_exec needs the same version; run"
            f" 'python{version_text(theirs)} -m pyprobes attach {pid}'"
        )
    return ptrace_problem(pid, proc=proc, euid=euid)


def ptrace_problem(pid: int, *, proc: str = "/proc", euid: int | None = None) -> str | None:
    """Why this process may not ptrace ``pid`` (one line), or None when it may as far as
    the uids and Yama's ``kernel.yama.ptrace_scope`` tell."""
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


def how_to_start_agent(pid: int, *, remote: bool = True) -> str:
    """The ways to give a process an agent, for error messages (``remote``: name attach's)."""
    text = (
        "start it with PYPROBES_AGENT=1 in its environment (pyprobes installed there), with"
        " 'pyprobes run --listen', or call pyprobes.agent.start() in it"
    )
    if remote:
        text += (
            f"; 'pyprobes attach {pid}' starts one itself (through gdb on CPython 3.12 and"
            " 3.13, through sys.remote_exec on 3.14+)"
        )
    return text


def bootstrap_timeout(environ: dict[str, str] | None = None) -> float:
    """How long to wait for the target to run the bootstrap (``PYPROBES_BOOTSTRAP_TIMEOUT``)."""
    raw = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return BOOTSTRAP_TIMEOUT
    return value if 0 < value < 1e6 else BOOTSTRAP_TIMEOUT


# The system calls a blocked main thread is most often in (x86_64, aarch64).
_SYSCALLS = {
    "x86_64": {
        0: "read", 7: "poll", 17: "pread64", 23: "select", 34: "pause", 35: "nanosleep",
        43: "accept", 45: "recvfrom", 47: "recvmsg", 61: "wait4", 202: "futex",
        230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid", 270: "pselect6",
        271: "ppoll", 281: "epoll_pwait", 288: "accept4", 441: "epoll_pwait2",
    },
    "aarch64": {
        22: "epoll_pwait", 63: "read", 67: "pread64", 72: "pselect6", 73: "ppoll",
        95: "waitid", 98: "futex", 101: "nanosleep", 115: "clock_nanosleep", 202: "accept",
        207: "recvfrom", 212: "recvmsg", 242: "accept4", 260: "wait4", 441: "epoll_pwait2",
    },
}  # fmt: skip
_WHAT = {
    "clock_nanosleep": "time.sleep", "nanosleep": "time.sleep", "futex": "a lock or a join",
    "recvfrom": "a socket recv", "recvmsg": "a socket recv", "read": "a read",
    "accept": "a socket accept", "accept4": "a socket accept", "wait4": "waiting for a child",
    "waitid": "waiting for a child", "select": "select", "pselect6": "select", "poll": "poll",
    "ppoll": "poll", "epoll_wait": "an event loop", "epoll_pwait": "an event loop",
    "epoll_pwait2": "an event loop", "pause": "signal.pause",
}  # fmt: skip


def main_thread_state(pid: int, proc: str = "/proc") -> str | None:
    """What the main thread of ``pid`` is doing, from /proc, as a few words (None: unknown)."""
    try:
        with open(f"{proc}/{pid}/task/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state == "R":
        return "its main thread is running C code that has not returned to Python"
    if state not in ("S", "D"):
        return None
    call = ""
    try:
        with open(f"{proc}/{pid}/task/{pid}/syscall", encoding="ascii") as f:
            number = int(f.read().split()[0])
        name = _SYSCALLS.get(platform.machine(), {}).get(number)
        if name is not None:
            call = f" (the system call {name}, as in {_WHAT.get(name, 'a C function')})"
        elif number >= 0:
            call = f" (system call {number})"
    except (OSError, ValueError, IndexError):
        pass
    return f"its main thread is blocked in a C call{call}"


def _remote_debug_cause(pid: int, proc: str) -> str:
    """Why remote debugging is off in ``pid``, as far as its environment and argv tell."""
    env = process_environ(pid, proc)
    if env.get("PYTHON_DISABLE_REMOTE_DEBUG"):
        return "its environment sets PYTHON_DISABLE_REMOTE_DEBUG"
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            argv = f.read(1 << 16).split(b"\0")
    except OSError:
        argv = []
    for i, arg in enumerate(argv):
        if arg == b"-Xdisable-remote-debug" or (
            arg == b"-X" and i + 1 < len(argv) and argv[i + 1] == b"disable-remote-debug"
        ):
            return "it was started with -X disable-remote-debug"
    return "PYTHON_DISABLE_REMOTE_DEBUG, -X disable-remote-debug, or a build without it"


def _map_remote_exec_error(pid: int, exc: BaseException, mine: str, proc: str) -> AttachError:
    """The one-line error for what ``sys.remote_exec`` raised."""
    text = str(exc)
    if isinstance(exc, PermissionError):
        return AttachPermissionError(
            f"not allowed to ptrace process {pid} ({exc.strerror or exc}): run pyprobes as"
            f" its user with ptrace allowed, or as root; or {how_to_start_agent(pid)}"
        )
    if isinstance(exc, ProcessLookupError):
        return NoSuchProcessError(f"no process {pid}")
    if "not enabled in the remote process" in text:
        return NoAgentError(
            f"remote debugging is disabled in process {pid} ({_remote_debug_cause(pid, proc)}),"
            f" so pyprobes cannot start an agent in it: restart it without that, or"
            f" {how_to_start_agent(pid, remote=False)}"
        )
    if "Can't send commands from" in text:
        return NoAgentError(
            f"process {pid} runs another Python version than this pyprobes ({text}): run"
            f" 'python3.N -m pyprobes attach {pid}' with its version"
        )
    return NoAgentError(
        f"sys.remote_exec could not reach process {pid} ({text}): is it CPython {mine}"
        f" with remote debugging enabled? Or {how_to_start_agent(pid)}"
    )


def _read_status(status: Path) -> str | None:
    try:
        return status.read_text(encoding="utf-8")
    except OSError:
        return None


def _status_result(pid: int, text: str) -> Path:
    if text.startswith("ok "):
        return Path(text[3:].strip())
    raise NoAgentError(
        f"the bootstrap ran in process {pid} but its agent did not start:"
        f" {text.removeprefix('error ').strip()}"
    )


def _forget_earlier(pid: int, keep: Path) -> None:
    """Remove the files of earlier given-up bootstraps of ``pid``: a new ``remote_exec``
    replaces the request the target still held, so it will never read them."""
    base = keep.parent
    for d in base.glob(f"{_WORKDIR_PREFIX}{pid}-*"):
        if d != keep and (d / GIVEN_UP).exists():
            shutil.rmtree(d, ignore_errors=True)


def _give_up(workdir: Path, status: Path, owner: int | None) -> bool:
    """Stop waiting but leave the request queued: the mark tells the script to clean up after
    itself. True if the status came first after all (then the files are ours to remove):
    the script writes its status before it looks for the mark, so one of us sees the other."""
    with contextlib.suppress(OSError):
        (workdir / GIVEN_UP).touch()
        if owner is not None and os.geteuid() == 0:
            os.chown(workdir / GIVEN_UP, owner, -1)
    return _read_status(status) is not None


def inject(
    pid: int,
    *,
    timeout: float | None = None,
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
    wait = bootstrap_timeout() if timeout is None else timeout
    mine = version_text((sys_module.version_info[0], sys_module.version_info[1]))
    workdir = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{pid}-"))
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
        except (RuntimeError, OSError, ValueError) as exc:
            finished = True
            raise _map_remote_exec_error(pid, exc, mine, proc) from None
        _forget_earlier(pid, workdir)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            text = _read_status(status)
            if text is not None:
                finished = True
                return _status_result(pid, text)
            if not pid_alive(pid):
                finished = True
                raise NoSuchProcessError(f"process {pid} exited during the attach")
            found = find_socket(pid, proc)
            if found is not None:  # another client's bootstrap (it replaced ours), or its own
                finished = _give_up(workdir, status, owner)
                return found
            time.sleep(0.02)
        finished = _give_up(workdir, status, owner)
        if finished:
            text = _read_status(status)
            assert text is not None
            return _status_result(pid, text)
        doing = main_thread_state(pid, proc) or "its main thread has not run Python code since"
        raise NoAgentError(
            f"process {pid} did not run the bootstrap within {wait:g}s: {doing}, and CPython"
            " runs it only when the main thread returns to Python code; the request stays"
            f" queued, so its agent starts then: run 'pyprobes attach {pid}' again later"
            f" ('pyprobes ps' shows it), wait longer with {TIMEOUT_ENV}=SECONDS, or"
            f" {how_to_start_agent(pid, remote=False)}"
        )
    finally:
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)


__all__ = [
    "BOOTSTRAP_TIMEOUT",
    "GIVEN_UP",
    "REMOTE_EXEC_SINCE",
    "TIMEOUT_ENV",
    "bootstrap_script",
    "bootstrap_timeout",
    "has_cap_sys_ptrace",
    "how_to_start_agent",
    "inject",
    "main_thread_state",
    "not_cpython",
    "ptrace_problem",
    "ptrace_scope",
    "remote_exec_problem",
    "target_python_version",
]
