"""``pyprobes ps``: the processes of this user that a pyprobes client can attach to.

Two kinds are listed. Each process with a live agent socket answers with its pid, Python
version, clients, probes and command line (sockets of processes that are gone are removed on
the way). Sockets count only in checked directories (private, of the uid they are for, not
symlinks) and only when served by the process they are named for, as their directory's
owner (SO_PEERCRED); all agents are asked at once, within ``PS_TIMEOUT`` seconds in all, and
one that does not answer is listed as such. Each other CPython 3.12+ process (found in
/proc) is listed too, as having no agent yet, with whether ``pyprobes attach`` can start one
there (through gdb on 3.12/3.13, ``sys.remote_exec`` on 3.14+; the same major.minor as this
pyprobes, gdb installed, ptrace allowed) and, when it cannot, why: the row says which Python
to run it with, or what is missing. Root sees every user's processes. What a process tells
about itself (argv, version) is untrusted: it is escaped before it reaches the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from pyprobes.attach import gdbinject, paths, procs
from pyprobes.attach.bootstrap import version_text
from pyprobes.attach.client import AgentConnection, connect_socket
from pyprobes.attach.errors import AttachError, ImpostorError
from pyprobes.output.sanitize import terminal_safe

#: Seconds for all agents together to answer.
PS_TIMEOUT = 2.0
#: Agents asked at once.
MAX_PARALLEL = 32


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``ps`` subcommand."""
    p = sub.add_parser(
        "ps",
        help="list the processes a pyprobes client can attach to",
        description="List this user's processes (every user's, for root) that run a pyprobes"
        " agent (pid, Python version, attached clients, probes and command line), and the"
        " CPython 3.12+ processes that have none yet, saying whether 'pyprobes attach' can"
        " start one in them (through gdb on 3.12/3.13, sys.remote_exec on 3.14+) or why not.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per process")
    p.set_defaults(func=ps)


def _probe_agent(pid: int, path: Path, timeout: float) -> dict[str, object]:
    conn = AgentConnection(connect_socket(pid, path, timeout), pid, path)
    try:
        welcome = conn.handshake("pyprobes ps", timeout)
    finally:
        conn.close()
    return dict(welcome)


def _agent_row(
    pid: int, path: Path, timeout: float, impostors: list[str]
) -> dict[str, object] | None:
    """The row of a process with an agent socket (None: the process is gone, or the socket
    is not its agent: served by another process or user, noted in ``impostors``)."""
    try:
        info = _probe_agent(pid, path, timeout)
    except ImpostorError as exc:
        impostors.append(str(exc))
        return None
    except AttachError as exc:
        if paths.pid_alive(pid):
            return {"pid": pid, "agent": None, "error": str(exc), "socket": str(path)}
        return None
    info.pop("type", None)
    info.pop("re", None)
    info.pop("client", None)  # this ps connection's number; "clients" counts the others
    info["agent"] = True
    info["socket"] = str(path)
    return info


def query_agents(
    sockets: list[tuple[int, Path]], bound: float = PS_TIMEOUT, impostors: list[str] | None = None
) -> dict[int, dict[str, object] | None]:
    """The rows of these agent sockets, asked in parallel within ``bound`` seconds in all.

    A socket that has not answered by then gets an error row saying so (a stopped or hung
    process, or a socket that listens and never answers); the threads are daemons, so none
    keeps ps waiting past the bound. Sockets not served by the process they name are left
    out and described in ``impostors``.
    """
    results: dict[int, dict[str, object] | None] = {}
    noted: list[str] = []
    lock = threading.Lock()
    work = list(reversed(sockets))
    deadline = time.monotonic() + bound

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                pid, path = work.pop()
            left = deadline - time.monotonic()
            if left <= 0:
                continue  # no time left: reported as unanswered
            mine: list[str] = []
            row = _agent_row(pid, path, left, mine)
            if row is not None and "error" in row and time.monotonic() >= deadline:
                continue  # it ran out of time: reported as unanswered, as the ones not asked
            with lock:
                results[pid] = row
                noted.extend(mine)

    threads = [
        threading.Thread(target=worker, name="pyprobes-ps", daemon=True)
        for _ in range(min(MAX_PARALLEL, len(sockets)))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        out = dict(results)
        if impostors is not None:
            impostors.extend(noted)
    for pid, path in sockets:
        if pid not in out:
            out[pid] = {
                "pid": pid,
                "agent": None,
                "error": f"its agent socket did not answer within {bound:g}s: is the process"
                " stopped or hung?",
                "socket": str(path),
            }
    return out


def no_agent_note(
    pid: int, version: tuple[int, int], mine: tuple[int, int], proc: str = "/proc"
) -> tuple[bool, str]:
    """Whether this pyprobes can start an agent in a CPython ``version`` process, and why."""
    if version != mine:
        return False, f"no agent; attach needs pyprobes on {version_text(version)}"
    if hasattr(sys, "remote_exec"):
        return True, f"no agent yet: 'pyprobes attach {pid}' starts one"
    if gdbinject.GDB_SINCE <= mine < gdbinject.GDB_UNTIL:
        if gdbinject.queued_bootstrap(pid, proc) is not None:
            return True, "no agent yet: its start is queued, for when a thread runs Python code"
        problem = gdbinject.gdb_problem(pid, proc=proc, mine=mine)
        if problem is None:
            return True, f"no agent yet: 'pyprobes attach {pid}' starts one (through gdb)"
        return False, f"no agent, and attach cannot start one: {problem}"
    return False, f"no agent; attach needs pyprobes on {version_text(version)}"


def collect(
    proc: str = "/proc",
    temp: str | None = None,
    bound: float = PS_TIMEOUT,
    impostors: list[str] | None = None,
    run_user: Path = paths.RUN_USER,
) -> list[dict[str, object]]:
    """The rows of ``pyprobes ps``: processes with an agent, then those without, by pid.

    Only sockets in checked directories count (see ``paths.all_runtime_dirs``), and each
    must be served by the process it is named for (SO_PEERCRED); every agent is asked at
    once, all within ``bound`` seconds.
    """
    me = os.getpid()
    sockets: dict[int, Path] = {}
    for directory in paths.all_runtime_dirs(temp, run_user):
        paths.clean_stale(directory.path, uid=directory.uid)
        for sock in paths.list_sockets(directory.path, directory.uid):
            if sock.pid != me and sock.pid not in sockets:
                sockets[sock.pid] = sock.path
    found = procs.python_processes(proc, since=gdbinject.GDB_SINCE)
    for p in found:
        if p.pid != me and p.pid not in sockets:
            path = paths.find_socket(p.pid, proc)  # an agent in a directory of its own
            if path is not None:
                sockets[p.pid] = path
    answers = query_agents(list(sockets.items()), bound, impostors)
    rows: list[dict[str, object]] = []
    seen: set[int] = {me}
    for pid in sockets:
        row = answers.get(pid)
        if row is not None:
            seen.add(pid)
            rows.append(row)
    mine = (sys.version_info[0], sys.version_info[1])
    for p in found:
        if p.pid in seen:
            continue
        seen.add(p.pid)
        attachable, note = no_agent_note(p.pid, p.version, mine, proc)
        rows.append(
            {
                "pid": p.pid,
                "agent": False,
                "attachable": attachable,
                "python": version_text(p.version),
                "uid": p.uid,
                "argv": list(p.argv),
                "note": note,
            }
        )
    return rows


def format_rows(rows: list[dict[str, object]]) -> str:
    """The table: one line per process, target-supplied text escaped."""
    out = [f"{'PID':>7}  {'PYTHON':<8} {'AGENT':<5} {'CLIENTS':>7} {'PROBES':>6}  COMMAND"]
    for row in rows:
        pid = row["pid"]
        if "error" in row:
            error = terminal_safe(str(row["error"]))
            out.append(f"{pid:>7}  {'?':<8} {'?':<5} {'?':>7} {'?':>6}  ({error})")
            continue
        argv = row.get("argv")
        command = terminal_safe(" ".join(str(a) for a in argv) if isinstance(argv, list) else "")
        python = terminal_safe(str(row.get("python", "?")), 16)
        if row.get("agent"):
            out.append(
                f"{pid:>7}  {python:<8} {'yes':<5} {row.get('clients', 0)!s:>7}"
                f" {row.get('probes', 0)!s:>6}  {command}"
            )
        else:
            out.append(
                f"{pid:>7}  {python:<8} {'no':<5} {'-':>7} {'-':>6}  {command}  ({row['note']})"
            )
    return "\n".join(out) + "\n"


def ps(args: argparse.Namespace) -> int:
    """Print the attachable processes."""
    impostors: list[str] = []
    rows = collect(impostors=impostors)
    if impostors:
        more = f" (and {len(impostors) - 1} more)" if len(impostors) > 1 else ""
        sys.stderr.write(f"pyprobes ps: ignored {terminal_safe(impostors[0])}{more}\n")
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, separators=(",", ":")) + "\n")
        return 0
    sys.stdout.write(format_rows(rows))
    return 0
