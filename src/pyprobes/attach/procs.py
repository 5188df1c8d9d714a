"""Finding the CPython processes of this user (every user's, for root) through ``/proc``.

A process is CPython when its executable (``/proc/PID/exe``) is a ``python3.N`` binary or
its maps name ``libpython3.N`` (an embedding program, a ``--enable-shared`` build); N is
its version (``bootstrap.target_python_version``). Nothing is asked of the process itself:
its command line is read from ``/proc/PID/cmdline`` and is untrusted text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyprobes.attach.bootstrap import REMOTE_EXEC_SINCE, target_python_version
from pyprobes.attach.paths import process_uid

MAX_ARGV = 32
MAX_ARG_CHARS = 256


@dataclass(frozen=True, slots=True)
class PythonProcess:
    """A CPython process found in /proc."""

    pid: int
    uid: int
    version: tuple[int, int]
    argv: tuple[str, ...]


def process_argv(pid: int, proc: str = "/proc") -> tuple[str, ...]:
    """The command line of ``pid``, bounded (() when /proc does not show it)."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_ARGV * MAX_ARG_CHARS * 4)
    except OSError:
        return ()
    args = raw.rstrip(b"\0").split(b"\0") if raw else []
    return tuple(os.fsdecode(a)[:MAX_ARG_CHARS] for a in args[:MAX_ARGV])


def python_processes(
    proc: str = "/proc", *, euid: int | None = None, since: tuple[int, int] = REMOTE_EXEC_SINCE
) -> list[PythonProcess]:
    """The CPython ``since``+ processes ``euid`` (default: ours) may attach to, by pid: its
    own, or everyone's for root. This process is left out."""
    me = os.geteuid() if euid is None else euid
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    out = []
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == os.getpid():
            continue
        uid = process_uid(pid, proc)
        if uid is None or me not in (0, uid):
            continue
        version = target_python_version(pid, proc)
        if version is None or version < since:
            continue
        out.append(PythonProcess(pid, uid, version, process_argv(pid, proc)))
    return sorted(out, key=lambda p: p.pid)


__all__ = ["PythonProcess", "process_argv", "python_processes"]
