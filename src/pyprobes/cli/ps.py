"""``pyprobes ps``: the processes of this user that a pyprobes client can attach to.

Each process with a live agent socket answers with its pid, Python version, clients, probes
and command line; sockets of processes that are gone are removed on the way. (On CPython
3.14+ ``pyprobes attach`` can also start an agent in a process of the same version that has
none; those are not listed.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pyprobes.attach import paths
from pyprobes.attach.client import AgentConnection, connect_socket
from pyprobes.attach.errors import AttachError

PS_TIMEOUT = 2.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``ps`` subcommand."""
    p = sub.add_parser(
        "ps",
        help="list the processes a pyprobes client can attach to",
        description="List this user's processes (every user's, for root) that run a pyprobes"
        " agent: pid, Python version, attached clients, probes and command line.",
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


def ps(args: argparse.Namespace) -> int:
    """Print the attachable processes."""
    rows: list[dict[str, object]] = []
    me = os.getpid()
    for directory in paths.all_runtime_dirs():
        paths.clean_stale(directory)
        for sock in paths.list_sockets(directory):
            if sock.pid == me:
                continue
            try:
                info = _probe_agent(sock.pid, sock.path)
            except AttachError as exc:
                if paths.pid_alive(sock.pid):
                    rows.append({"pid": sock.pid, "error": str(exc), "socket": str(sock.path)})
                continue
            info.pop("type", None)
            info.pop("re", None)
            info.pop("client", None)  # this ps connection's number; "clients" counts the others
            info["socket"] = str(sock.path)
            rows.append(info)
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, separators=(",", ":")) + "\n")
        return 0
    out = [f"{'PID':>7}  {'PYTHON':<8} {'CLIENTS':>7} {'PROBES':>6}  COMMAND"]
    for row in rows:
        if "error" in row:
            out.append(f"{row['pid']:>7}  {'?':<8} {'?':>7} {'?':>6}  ({row['error']})")
            continue
        argv = row.get("argv")
        command = " ".join(str(a) for a in argv) if isinstance(argv, list) else ""
        out.append(
            f"{row['pid']:>7}  {row.get('python', '?')!s:<8} {row.get('clients', 0)!s:>7}"
            f" {row.get('probes', 0)!s:>6}  {command}"
        )
    sys.stdout.write("\n".join(out) + "\n")
    return 0
