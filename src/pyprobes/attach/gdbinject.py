"""Starting an agent in a CPython 3.12/3.13 process that runs none, through gdb.

These versions have no ``sys.remote_exec``, so pyprobes asks gdb to queue the start for it.
One batch gdb session (``gdb -nx -batch -p PID``, stdin from /dev/null, no init files, no
auto-loaded scripts, only libpython's and libc's symbols read) stops the target for about
half a second and makes three calls in it, none of which runs Python code or takes the GIL:

1. ``mmap`` one private page (a system call: no lock, no malloc arena, safe wherever the
   thread stopped) and write into it, from a file, a few lines of Python (the *payload*);
2. ``PyInterpreterState_Main()``;
3. ``_PyEval_AddPendingCall(interp, PyRun_SimpleString, page, 0)``: CPython's pending-call
   queue (what ``Py_AddPendingCall`` uses, without its main-thread-only flag), whose
   functions have the type ``int (*)(void *)``; ``PyRun_SimpleString(const char *)`` has
   that ABI. It takes the queue's lock for a few instructions, pushes, and sets the eval
   breaker.

and then detaches (``-ex detach`` comes after the command file, so it runs whatever failed
before it). Before those calls, the command file checks that every symbol is there and that
``Py_Version`` is this interpreter's major.minor; a failed check ends the file, nothing called.

The first thread of the target that checks its eval breaker while running Python code runs
``PyRun_SimpleString(payload)`` with the GIL, between two bytecodes: a safe point. The
payload names nothing in ``__main__``; if the process is still the one asked for (not a fork
child that inherited the queue) it imports ``threading`` if the program has not (on this
thread, so that 3.12's ``threading.main_thread()`` stays right: in a single-threaded program
this is the main thread) and starts a thread of its own, ``_thread.start_new_thread``,
and returns 0 (it catches everything: a pending call that fails would raise in the program;
a KeyboardInterrupt that hit it is handed back to the main thread with ``interrupt_main``).
That thread runs the same bootstrap script as ``sys.remote_exec`` on 3.14 (see
``bootstrap``): import pyprobes (from the client's package directory when the target's
sys.path has none), ``pyprobes.agent.start()``, and ``ok SOCKET`` or ``error TEXT`` in a status
file. The agent is the one every other way starts: same socket, protocol and checks.

What can go wrong, each one line (``inject`` raises an AttachError saying what to do):
gdb missing (``PYPROBES_GDB`` names another one); ptrace refused (another uid, Yama's
``ptrace_scope``, a container without CAP_SYS_PTRACE, another tracer); another CPython
major.minor or build (free-threaded) than the client; no CPython at all; a build without the
symbols (stripped of its dynamic symbols, or static without ``-export-dynamic``); the target
exiting meanwhile; and no safe point within the bound (``PYPROBES_BOOTSTRAP_TIMEOUT``,
default 10 s): every thread is blocked in a C call (``time.sleep``, ``recv``, a lock) and
none returns to Python. gdb cannot make one return (a signal would run the program's own
handlers), so the start stays queued and happens when a thread next runs Python code; a
later ``pyprobes attach`` waits for that queued start instead of queueing another. One
bootstrap of a pid runs at a time (a lock file per pid: a process has one tracer), and a
client that finds the agent listening once it holds the lock uses it: the agent never starts
twice (``agent.start()`` is idempotent too).

gdb is bounded too (``PYPROBES_GDB_TIMEOUT``, and ``CALL_TIMEOUT`` for the queueing call):
past it, gdb gets SIGINT, which with ``unwindonsignal`` abandons a call in progress, restores
the thread and lets gdb detach; then SIGKILL. It runs in a session of its own with its output
in a file, so a client killed or interrupted meanwhile leaves it to finish and detach;
coreutils' ``timeout`` (when there) bounds it even then. After a gdb that had to be stopped, a
target left stopped (state T) gets SIGCONT.

Files: ``<tmp>/pyprobes-gdb-PID-XXXX/`` (``mkdtemp``, 0700, given to the target's uid when
root attaches) holds the command file, the payload, the script, gdb's log and the status; the
client removes it once the status is read; a client that stops waiting marks it, and the
script removes it when it runs; the thread removes it when the client is gone (killed). Those
of exited processes are swept by the next attach.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyprobes.attach import bootstrap
from pyprobes.attach.errors import (
    AttachError,
    AttachPermissionError,
    NoAgentError,
    NoSuchProcessError,
)
from pyprobes.attach.paths import find_socket, pid_alive, process_uid

#: The CPython versions this bootstrap is for (3.14+ use sys.remote_exec).
GDB_SINCE = (3, 12)
GDB_UNTIL = bootstrap.REMOTE_EXEC_SINCE
GDB_ENV = "PYPROBES_GDB"
#: Seconds gdb may take to attach, queue and detach before it is interrupted.
GDB_TIMEOUT = 20.0
GDB_TIMEOUT_ENV = "PYPROBES_GDB_TIMEOUT"
#: Seconds between SIGINT and SIGKILL for a gdb past its time.
GDB_GRACE = 5.0
#: Seconds the queueing call may take (it takes microseconds; more means it is blocked).
CALL_TIMEOUT = 3.0
#: Seconds to wait for the status of a bootstrap whose agent already listens.
STATUS_GRACE = 2.0
WORKDIR_PREFIX = "pyprobes-gdb-"
#: Where the command file's mmap flags (MAP_PRIVATE | MAP_ANONYMOUS = 0x22) are right.
MACHINES = ("x86_64", "aarch64")
PAGE = 4096
INSTALL_HINT = (
    "install gdb (Debian/Ubuntu: apt-get install gdb; Fedora/RHEL: dnf install gdb; Alpine:"
    f" apk add gdb) or name it with {GDB_ENV}=PATH"
)
#: The symbols the command file checks, in its order (``mmap`` is libc's).
SYMBOLS = ("Py_Version", "PyInterpreterState_Main", "_PyEval_AddPendingCall",
           "PyRun_SimpleString", "mmap")  # fmt: skip
_BUILD_IN_NAME = re.compile(r"(?:^|/)(?:lib)?python3\.(\d+)(t?)(?:[^/]*)$")

# The pending call's code. threading is imported here, on the thread that runs the call, as
# the program would: imported first on another thread, 3.12's threading takes that one for
# the main thread (tests/attach/test_gdbinject.py shows it).
_PAYLOAD = """\
try:
 if __import__('os').getpid()=={pid}:
  __import__('threading');__import__('_thread').start_new_thread(exec,({code!r},{{}}))
except KeyboardInterrupt:__import__('_thread').interrupt_main()
except BaseException:pass
"""
# The thread's code: the bootstrap script, then, if the client that queued it is gone (killed
# while it waited), the removal of its files, which nobody else would read.
_THREAD_CODE = """\
try:
 exec(open({script!r},encoding='utf-8').read(),{{'__name__':'__pyprobes_bootstrap__'}})
 import os,shutil
 try:os.kill({client},0)
 except ProcessLookupError:shutil.rmtree({workdir!r},ignore_errors=True)
except BaseException:pass
"""

_COMMANDS = """\
set confirm off
set pagination off
set width 0
set height 0
set print thread-events off
set unwindonsignal on
set scheduler-locking off
sharedlibrary libpython3
sharedlibrary libc[.-]
echo PYPROBES-STOPPED\\n
{checks}echo PYPROBES-SYMBOLS-OK\\n
if ((*(unsigned int *) &Py_Version) >> 16) != {hexversion:#06x}
  echo PYPROBES-VERSION-MISMATCH\\n
  print/x *(unsigned int *) &Py_Version
else
  set $pyprobes_interp = (void *) PyInterpreterState_Main()
  if $pyprobes_interp == 0
    echo PYPROBES-NO-INTERPRETER\\n
  else
    set $pyprobes_page = (char *) mmap(0, {page}, 3, 0x22, -1, 0)
    if (long) $pyprobes_page == -1
      echo PYPROBES-NO-MEMORY\\n
    else
      restore {payload} binary $pyprobes_page
      echo PYPROBES-QUEUE\\n
      set $pyprobes_func = (void *) PyRun_SimpleString
      output (int) _PyEval_AddPendingCall($pyprobes_interp, $pyprobes_func, $pyprobes_page, 0)
      echo \\nPYPROBES-QUEUED\\n
    end
  end
end
"""


def find_gdb(environ: dict[str, str] | None = None) -> str | None:
    """The gdb to run: ``PYPROBES_GDB`` if set (a path or a name on PATH), else ``gdb``."""
    name = (os.environ if environ is None else environ).get(GDB_ENV, "") or "gdb"
    found = shutil.which(name)
    return found


def gdb_timeout(environ: dict[str, str] | None = None) -> float:
    """How long gdb may take (``PYPROBES_GDB_TIMEOUT``)."""
    raw = (os.environ if environ is None else environ).get(GDB_TIMEOUT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return GDB_TIMEOUT
    return value if 0 < value < 1e6 else GDB_TIMEOUT


def target_build(pid: int, proc: str = "/proc") -> tuple[int, int, bool] | None:
    """(3, minor, free-threaded) of the CPython ``pid`` runs, from its executable's name or a
    libpython in its maps; None when neither tells."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        names.append(os.readlink(f"{proc}/{pid}/exe").removesuffix(" (deleted)"))
    with contextlib.suppress(OSError), open(f"{proc}/{pid}/maps", encoding="utf-8") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "libpython3." in fields[5]:
                names.append(fields[5].strip())
                break
    for name in names:
        m = _BUILD_IN_NAME.search(name)
        if m:
            return 3, int(m.group(1)), m.group(2) == "t"
    return None


def _free_threaded() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def tracer_of(pid: int, proc: str = "/proc") -> int:
    """The pid tracing ``pid`` (0: none or unknown)."""
    path = f"{proc}/{pid}/status"
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(path, encoding="utf-8", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def gdb_problem(
    pid: int,
    *,
    proc: str = "/proc",
    euid: int | None = None,
    mine: tuple[int, int] | None = None,
    free_threaded: bool | None = None,
    environ: dict[str, str] | None = None,
    check_tracer: bool = True,
) -> str | None:
    """Why gdb cannot start an agent in ``pid`` (one line), or None as far as /proc tells."""
    me = mine or (sys.version_info[0], sys.version_info[1])
    ft = _free_threaded() if free_threaded is None else free_threaded
    if not GDB_SINCE <= me < GDB_UNTIL:
        return (
            f"this pyprobes runs on Python {bootstrap.version_text(me)}; the gdb bootstrap is"
            " for CPython 3.12 and 3.13"
        )
    if sys.platform != "linux" or platform.machine() not in MACHINES:
        return (
            f"the gdb bootstrap runs on Linux {' and '.join(MACHINES)} only (this is"
            f" {sys.platform} {platform.machine()})"
        )
    build = target_build(pid, proc)
    if build is not None:
        theirs = (build[0], build[1])
        if theirs != me:
            return (
                f"process {pid} runs Python {bootstrap.version_text(theirs)} but this pyprobes"
                f" runs on {bootstrap.version_text(me)}: the agent must load in the same"
                f" version; run 'python{bootstrap.version_text(theirs)} -m pyprobes attach {pid}'"
            )
        if build[2] != ft:
            what = "a free-threaded" if build[2] else "a GIL"
            mine_what = "free-threaded" if ft else "GIL"
            return (
                f"process {pid} runs {what} build of CPython {bootstrap.version_text(theirs)}"
                f" and this pyprobes runs on a {mine_what} build: run pyprobes with the"
                f" target's own interpreter ('python{bootstrap.version_text(theirs)}"
                f"{'t' if build[2] else ''} -m pyprobes attach {pid}')"
            )
    problem = bootstrap.ptrace_problem(pid, proc=proc, euid=euid)
    if problem is not None:
        return problem
    tracer = tracer_of(pid, proc) if check_tracer else 0
    if tracer:
        return _traced(pid, tracer)
    if find_gdb(environ) is None:
        name = (os.environ if environ is None else environ).get(GDB_ENV, "") or "gdb"
        return f"starting an agent on CPython 3.12/3.13 needs gdb and {name} is not found: " + (
            INSTALL_HINT
        )
    return None


def _traced(pid: int, tracer: int) -> str:
    return (
        f"process {pid} is already traced by process {tracer} (a debugger or strace):"
        " detach that first"
    )


def payload_text(pid: int, script: str, client: int | None = None) -> str:
    """The Python that ``PyRun_SimpleString`` runs at the safe point (it fits one page)."""
    code = _THREAD_CODE.format(
        script=script,
        client=os.getpid() if client is None else client,
        workdir=os.path.dirname(script),
    )
    text = _PAYLOAD.format(pid=pid, code=code)
    if len(text.encode()) >= PAGE:
        raise AttachError(f"the bootstrap's path is too long: {script}")
    return text


def gdb_commands(payload_path: str, version: tuple[int, int]) -> str:
    """The gdb command file: checks, then mmap, write, queue."""
    checks = "".join(f"echo PYPROBES-CHECK {s}\\n\ninfo address {s}\n" for s in SYMBOLS)
    return _COMMANDS.format(
        checks=checks,
        hexversion=version[0] << 8 | version[1],
        page=PAGE,
        payload=payload_path,
    )


def gdb_argv(gdb: str, pid: int, commands: str, bound: float) -> list[str]:
    """The command line: batch, no init files, nothing auto-loaded, detach always last;
    under coreutils' ``timeout`` when there, which bounds gdb even if the client dies."""
    argv = [
        gdb, "-nx", "-nh", "-batch", "-p", str(pid),
        "-iex", "set debuginfod enabled off",
        "-iex", "set auto-load off",
        "-iex", "set auto-solib-add off",
        "-x", commands,
        "-ex", "detach",
        "-ex", "echo PYPROBES-DETACHED\\n",
    ]  # fmt: skip
    watchdog = shutil.which("timeout")
    if watchdog is not None:
        # --foreground: the signal goes to gdb alone, once (not to its group as well)
        argv = [watchdog, "--foreground", "-s", "INT", "-k", f"{GDB_GRACE:g}", f"{bound:g}", *argv]
    return argv


@dataclass(frozen=True)
class GdbRun:
    """What one gdb session did: its output, whether it queued the start, whether it had to
    be interrupted (past its bound, or a call that did not return) or killed."""

    output: str
    queued: bool
    killed: bool
    call_hung: bool = False


def stopped_threads(pid: int, proc: str = "/proc") -> list[int]:
    """The threads of ``pid`` in state T (stopped by a signal, not traced)."""
    out = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"{proc}/{pid}/task"):
            with (
                contextlib.suppress(OSError, IndexError),
                open(f"{proc}/{pid}/task/{tid}/stat", encoding="ascii") as f,
            ):
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    out.append(int(tid))
    return out


def _resume_if_stopped(pid: int) -> None:
    if stopped_threads(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)


def _read(log: Path) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def run_gdb(
    argv: list[str], log: Path, pid: int, bound: float, call_bound: float = CALL_TIMEOUT
) -> GdbRun:
    """Run gdb (own session, stdin /dev/null, output to ``log``) within ``bound`` seconds,
    and its queueing call within ``call_bound``: past either, SIGINT (with ``unwindonsignal``
    gdb abandons the call and restores the thread, then detaches), then SIGKILL after
    ``GDB_GRACE``; a target left stopped gets SIGCONT."""
    with open(log, "wb") as out:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    interrupted = killed = call_hung = False
    deadline = time.monotonic() + bound + 1.0
    call_since: float | None = None
    try:
        while child.poll() is None:
            now = time.monotonic()
            if not interrupted:
                text = _read(log)
                in_call = "PYPROBES-QUEUE\n" in text and "PYPROBES-QUEUED" not in text
                call_since = (call_since or now) if in_call else None
                if call_since is not None and now - call_since > call_bound:
                    call_hung = True
                    deadline = now  # interrupt it now
            if now >= deadline:
                if not interrupted:
                    interrupted = True
                    # to gdb (or the timeout(1) over it, which passes it on), not the group:
                    # a second SIGINT could abort gdb's detach
                    with contextlib.suppress(OSError):
                        os.kill(child.pid, signal.SIGINT)
                    deadline = now + GDB_GRACE
                else:
                    killed = True
                    with contextlib.suppress(OSError):
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(0.01)
    except KeyboardInterrupt:
        # gdb is in the middle of it: let it finish and detach (it is bounded), then go.
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(bound + GDB_GRACE + 1.0)
        if child.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        _resume_if_stopped(pid)
        raise
    output = _read(log)
    detached = "PYPROBES-DETACHED" in output
    # 124/137: timeout(1) interrupted or killed it; a negative code: a signal did
    stopped = interrupted or killed or child.returncode in (124, 137) or child.returncode < 0
    if stopped or not detached:
        if stopped:  # anything gdb left running in its group (a shell command)
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
        _resume_if_stopped(pid)
    return GdbRun(output, _queued(output), (stopped and not detached) or interrupted, call_hung)


def _queued(output: str) -> bool:
    m = re.search(r"PYPROBES-QUEUE\n(-?\d+)\s*\nPYPROBES-QUEUED", output)
    return m is not None and int(m.group(1)) == 0


def gdb_failure(pid: int, run: GdbRun, bound: float, proc: str = "/proc") -> AttachError:
    """The one-line error for a gdb session that did not queue the start."""
    out = run.output
    if "ptrace: No such process" in out or exited(pid, proc):
        return NoSuchProcessError(f"process {pid} exited during the attach")
    if "ptrace: Operation not permitted" in out or "Could not attach to process" in out:
        tracer = tracer_of(pid, proc)
        if tracer:
            return AttachPermissionError(_traced(pid, tracer))
        reason = bootstrap.ptrace_problem(pid, proc=proc)
        if reason is None:
            reason = (
                "the kernel refused ptrace although the uids and Yama allow it: in a container,"
                " give it CAP_SYS_PTRACE (docker run --cap-add=SYS_PTRACE) and a seccomp"
                " profile that allows ptrace; or the process made itself undumpable"
            )
        return AttachPermissionError(f"not allowed to ptrace process {pid}: {reason}")
    if run.call_hung:
        return NoAgentError(
            f"gdb's call to queue the agent's start in process {pid} did not return within"
            f" {CALL_TIMEOUT:g}s (the thread gdb stopped held a lock it needs) and was"
            " abandoned, the thread restored and the process resumed: try again"
        )
    if run.killed:
        return NoAgentError(
            f"gdb did not finish with process {pid} within {bound:g}s and was stopped (the"
            " process was resumed); is it in uninterruptible sleep (state D)? wait longer"
            f" with {GDB_TIMEOUT_ENV}=SECONDS"
        )
    if "PYPROBES-VERSION-MISMATCH" in out:
        m = re.search(r"PYPROBES-VERSION-MISMATCH\n\$\d+ = 0x([0-9a-f]+)", out)
        theirs = f"{int(m.group(1)[:-6] or '0', 16)}.{int(m.group(1)[-6:-4], 16)}" if m else "?"
        mine = bootstrap.version_text((sys.version_info[0], sys.version_info[1]))
        return NoAgentError(
            f"process {pid} runs Python {theirs} (its Py_Version) but this pyprobes runs on"
            f" {mine}: run 'python{theirs} -m pyprobes attach {pid}'"
        )
    no_symbol = re.search(r'No symbol "([^"]+)" in current context', out)
    if "PYPROBES-SYMBOLS-OK" not in out and no_symbol is not None:
        missing = no_symbol.group(1)
        if missing in ("Py_Version", "PyInterpreterState_Main"):
            return NoAgentError(
                f"process {pid} has no symbol {missing}: it is no CPython 3.12+ process, or a"
                " build without its dynamic symbols; start an agent in it instead: "
                + bootstrap.how_to_start_agent(pid, remote=False)
            )
        where = "libc" if missing == "mmap" else "its python"
        return NoAgentError(
            f"gdb finds no symbol {missing} in {where} of process {pid} (a static or stripped"
            " build?), so it cannot queue the agent's start: "
            + bootstrap.how_to_start_agent(pid, remote=False)
        )
    if "PYPROBES-NO-INTERPRETER" in out:
        return NoAgentError(f"process {pid} has no Python interpreter running (yet or any more)")
    if "PYPROBES-NO-MEMORY" in out:
        return NoAgentError(f"process {pid} could not map a page for the bootstrap (mmap failed)")
    if re.search(r"PYPROBES-QUEUE\n-1", out):
        return NoAgentError(
            f"the pending-call queue of process {pid} is full (it is not running Python code"
            " and earlier requests wait): try again later"
        )
    last = [line.strip() for line in out.splitlines() if line.strip() and "PYPROBES" not in line]
    detail = last[-1] if last else "no output"
    return NoAgentError(f"gdb could not queue the agent's start in process {pid}: {detail}")


# -- the bootstrap's files ----------------------------------------------------------------------


def _start_time(pid: int, proc: str = "/proc") -> str | None:
    """The start time of ``pid`` (field 22 of its stat), which tells a reused pid apart."""
    try:
        with open(f"{proc}/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _workdirs(pid: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{pid}-*"))


def sweep_workdirs(proc: str = "/proc") -> None:
    """Remove the bootstrap files of processes that are gone (or whose pid was reused)."""
    for lock in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*.lock"):
        pid_text = lock.name[len(WORKDIR_PREFIX) : -len(".lock")]
        if pid_text.isdigit() and exited(int(pid_text), proc) and not lock.is_symlink():
            with contextlib.suppress(OSError):
                if lock.stat().st_uid == os.geteuid():
                    lock.unlink()
    for d in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid_text = d.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            if d.is_symlink() or (d.stat().st_uid != os.geteuid() and os.geteuid() != 0):
                continue
        except OSError:
            continue
        try:
            stamp: str | None = (d / "started").read_text(encoding="ascii").strip()
        except OSError:
            stamp = None  # (a status the script wrote while its client removed the rest)
        pid = int(pid_text)
        if exited(pid, proc) or (stamp is not None and _start_time(pid, proc) != stamp):
            shutil.rmtree(d, ignore_errors=True)


def queued_bootstrap(pid: int, proc: str = "/proc") -> Path | None:
    """The status file of a start already queued in ``pid`` that has not run yet (left by an
    attach that gave up waiting), after removing the files of finished or dead ones."""
    started = _start_time(pid, proc)
    found = None
    for d in _workdirs(pid):
        try:
            if d.is_symlink() or (d.stat().st_uid != os.geteuid() and os.geteuid() != 0):
                continue
            stamp = (d / "started").read_text(encoding="ascii").strip()
        except OSError:
            continue
        if started is None or stamp != started or (d / "status").exists():
            shutil.rmtree(d, ignore_errors=True)
            continue
        if (d / bootstrap.GIVEN_UP).exists() and (d / "queued").exists():
            found = d / "status"
    return found


def all_blocked(pid: int, proc: str = "/proc") -> str:
    """Why no thread of ``pid`` reached a safe point, as far as /proc tells."""
    try:
        tids = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        tids = []
    main = bootstrap.main_thread_state(pid, proc) or "its main thread ran no Python code"
    if len(tids) <= 1:
        return main
    return f"none of its {len(tids)} threads ran Python code ({main.removeprefix('its ')})"


def exited(pid: int, proc: str = "/proc") -> bool:
    """Whether ``pid`` is gone or a zombie (its parent has not reaped it yet)."""
    if not pid_alive(pid):
        return True
    try:
        with open(f"{proc}/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _wait(pid: int, status: Path, wait: float, proc: str) -> tuple[Path | None, bool]:
    """The agent's socket once the bootstrap says so, and whether it did (a socket that
    appears without its status is waited on for ``STATUS_GRACE``: the script writes the
    status right after the agent listens; past that, another start made it); (None, False)
    when ``wait`` runs out."""
    deadline = time.monotonic() + wait
    socket_since: float | None = None
    while True:
        with contextlib.suppress(OSError):
            text = status.read_text(encoding="utf-8")
            if text.startswith("ok "):
                return Path(text[3:].strip()), True
            raise NoAgentError(
                f"the bootstrap ran in process {pid} but its agent did not start:"
                f" {text.removeprefix('error ').strip()}"
            )
        if exited(pid, proc):
            raise NoSuchProcessError(f"process {pid} exited during the attach")
        now = time.monotonic()
        found = find_socket(pid, proc)
        if found is not None:
            socket_since = socket_since or now
            if now - socket_since >= STATUS_GRACE:
                return found, False
        elif now >= deadline:
            return None, False
        time.sleep(0.02)


def _give_up(workdir: Path, owner: int | None) -> None:
    """Leave the start queued; the mark makes the script remove the files when it runs."""
    with contextlib.suppress(OSError):
        (workdir / bootstrap.GIVEN_UP).touch()
        if owner is not None and os.geteuid() == 0:
            os.chown(workdir / bootstrap.GIVEN_UP, owner, -1)


def _not_reached(pid: int, wait: float, proc: str, again: bool) -> NoAgentError:
    how = "was queued earlier and still waits" if again else "stays queued"
    return NoAgentError(
        f"process {pid} reached no safe point within {wait:g}s: {all_blocked(pid, proc)}, and"
        f" the agent starts only when a thread runs Python code; its start {how}, so it"
        f" happens then: run 'pyprobes attach {pid}' again later ('pyprobes ps' shows it),"
        f" wait longer with {bootstrap.TIMEOUT_ENV}=SECONDS, or"
        f" {bootstrap.how_to_start_agent(pid, remote=False)}"
    )


def inject(pid: int, *, timeout: float | None = None, proc: str = "/proc") -> Path:
    """Start an agent in ``pid`` through gdb; returns its socket path."""
    if not pid_alive(pid):
        raise NoSuchProcessError(f"no process {pid}")
    problem = gdb_problem(pid, proc=proc, check_tracer=False)  # another client's gdb may
    if problem is not None:  # trace it now: the lock below waits for that one
        raise NoAgentError(
            f"process {pid} runs no pyprobes agent and none can be started in it: {problem};"
            f" or {bootstrap.how_to_start_agent(pid, remote=False)}"
        )
    wait = bootstrap.bootstrap_timeout() if timeout is None else timeout
    sweep_workdirs(proc)
    with _bootstrap_lock(pid, gdb_timeout() + GDB_GRACE + wait + 5.0):
        found = find_socket(pid, proc)  # started meanwhile, by the client that held the lock
        if found is not None:
            return found
        tracer = tracer_of(pid, proc)
        if tracer:
            raise AttachPermissionError(
                f"{_traced(pid, tracer)}; or {bootstrap.how_to_start_agent(pid, remote=False)}"
            )
        return _inject_locked(pid, wait, proc)


@contextlib.contextmanager
def _bootstrap_lock(pid: int, bound: float) -> Iterator[None]:
    """One bootstrap of ``pid`` at a time (of this user): a second gdb could not attach (a
    process has one tracer), and the second client then finds the first one's agent."""
    path = Path(tempfile.gettempdir()) / f"{WORKDIR_PREFIX}{pid}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:  # another user's, or a link: go without
        yield
        return
    try:
        deadline = time.monotonic() + bound
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise NoAgentError(
                        f"another pyprobes has been starting an agent in process {pid} for"
                        f" {bound:g}s: try again later"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def _inject_locked(pid: int, wait: float, proc: str) -> Path:
    earlier = queued_bootstrap(pid, proc)
    if earlier is not None:  # do not queue a second start: wait for that one
        found, _ = _wait(pid, earlier, wait, proc)  # its files: the script removes them
        if found is None:
            raise _not_reached(pid, wait, proc, again=True)
        return found
    started = _start_time(pid, proc)
    owner = process_uid(pid, proc)
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{pid}-"))
    finished = True
    try:
        script = workdir / "bootstrap.py"
        status = workdir / "status"
        payload = workdir / "payload.py"
        commands = workdir / "commands.gdb"
        script.write_text(
            bootstrap.bootstrap_script(pid, str(status), bootstrap._pyprobes_parent()), "utf-8"
        )
        payload.write_text(payload_text(pid, str(script)), "utf-8")
        mine = (sys.version_info[0], sys.version_info[1])
        commands.write_text(gdb_commands(str(payload), mine), "utf-8")
        (workdir / "started").write_text(f"{started}\n", "ascii")
        if os.geteuid() == 0 and owner not in (None, 0):
            assert owner is not None
            os.chown(workdir, owner, -1)  # the target reads the script, writes its status
            os.chown(script, owner, -1)
        gdb = find_gdb()
        assert gdb is not None
        bound = gdb_timeout()
        run = run_gdb(gdb_argv(gdb, pid, str(commands), bound), workdir / "gdb.log", pid, bound)
        if not run.queued:
            raise gdb_failure(pid, run, bound, proc)
        (workdir / "queued").touch()
        found, reported = _wait(pid, status, wait, proc)
        if not reported:
            # Stop waiting, leave the start queued: the mark makes the script remove these
            # files when it runs; if the status came first after all, they are ours to remove.
            _give_up(workdir, owner)
            if status.exists():
                found, reported = _wait(pid, status, 0, proc)
            finished = reported
        if found is None:
            raise _not_reached(pid, wait, proc, again=False)
        return found
    finally:
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)


__all__ = [
    "CALL_TIMEOUT",
    "GDB_ENV",
    "GDB_SINCE",
    "GDB_TIMEOUT",
    "GDB_TIMEOUT_ENV",
    "GDB_UNTIL",
    "INSTALL_HINT",
    "SYMBOLS",
    "GdbRun",
    "all_blocked",
    "exited",
    "find_gdb",
    "gdb_argv",
    "gdb_commands",
    "gdb_failure",
    "gdb_problem",
    "gdb_timeout",
    "inject",
    "payload_text",
    "queued_bootstrap",
    "run_gdb",
    "stopped_threads",
    "sweep_workdirs",
    "target_build",
    "tracer_of",
]
