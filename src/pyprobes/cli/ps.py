"""``pyprobes ps``: the processes of this user that a pyprobes client can attach to.

Two kinds are listed. Each process with a live agent socket answers with its pid, Python
version, clients, probes and command line (sockets of processes that are gone are removed on
the way). Each other CPython 3.14+ process (found in /proc) is listed too, as having no agent
yet: ``pyprobes attach`` starts one there through ``sys.remote_exec`` when this pyprobes runs
on the same major.minor, and the row says which Python to run it with otherwise. Root sees
every user's processes. What a process tells about itself (argv, version) is untrusted: it
is escaped before it reaches the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pyprobes.attach import paths, procs
from pyprobes.attach.bootstrap import version_text
from pyprobes.attach.client import AgentConnection, connect_socket
from pyprobes.attach.errors import AttachError
from pyprobes.output.sanitize import terminal_safe

PS_TIMEOUT = 2.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``ps`` subcommand."""
    p = sub.add_parser(
        "ps",
        help="list the processes a pyprobes client can attach to",
        description="List this user's processes (every user's, for root) that run a pyprobes"
        " agent (pid, Python version, attached clients, probes and command line), and the"
        " CPython 3.14+ processes that have none yet, which 'pyprobes attach' can start one in.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per process")
    p.set_defaults(func=ps)


def _probe_agent(pid: int, path: Path) -> dict[str, object]:
    conn = AgentConnection(connect_socket(pid, path, PS_TIMEOUT), pid, path)
    try:
        welcome = conn.handshake("pyprobes ps", PS_TIMEOUT)
    finally:
        conn.close()
    return dict(welcome)


def _agent_row(pid: int, path: Path) -> dict[str, object] | None:
    """The row of a process with an agent socket (None: the process is gone)."""
    try:
        info = _probe_agent(pid, path)
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


def no_agent_note(pid: int, version: tuple[int, int], mine: tuple[int, int]) -> tuple[bool, str]:
    """Whether this pyprobes can start an agent in a CPython ``version`` process, and why."""
    if version == mine and hasattr(sys, "remote_exec"):
        return True, f"no agent yet: 'pyprobes attach {pid}' starts one"
    return False, f"no agent; attach needs pyprobes on {version_text(version)}"


def collect(proc: str = "/proc") -> list[dict[str, object]]:
    """The rows of ``pyprobes ps``: processes with an agent, then those without, by pid."""
    rows: list[dict[str, object]] = []
    me = os.getpid()
    seen: set[int] = {me}
    for directory in paths.all_runtime_dirs():
        paths.clean_stale(directory)
        for sock in paths.list_sockets(directory):
            if sock.pid in seen:
                continue
            row = _agent_row(sock.pid, sock.path)
            if row is not None:
                seen.add(sock.pid)
                rows.append(row)
    mine = (sys.version_info[0], sys.version_info[1])
    for p in procs.python_processes(proc):
        if p.pid in seen:
            continue
        seen.add(p.pid)
        found = paths.find_socket(p.pid, proc)  # an agent in a directory of its own
        row = _agent_row(p.pid, found) if found is not None else None
        if row is None:
            attachable, note = no_agent_note(p.pid, p.version, mine)
            row = {
                "pid": p.pid,
                "agent": False,
                "attachable": attachable,
                "python": version_text(p.version),
                "uid": p.uid,
                "argv": list(p.argv),
                "note": note,
            }
        rows.append(row)
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
    rows = collect()
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, separators=(",", ":")) + "\n")
        return 0
    sys.stdout.write(format_rows(rows))
    return 0
