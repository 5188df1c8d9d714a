"""``pyprobes ps`` without real targets: CPython processes found in a stand-in /proc."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pyprobes.attach import gdbinject, procs
from pyprobes.cli import ps
from pyprobes.output.sanitize import terminal_safe


def add_process(root: Path, pid: int, exe: str, argv: list[bytes], maps: str = "") -> Path:
    d = root / str(pid)
    d.mkdir(parents=True)
    os.symlink(exe, d / "exe")
    (d / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (d / "maps").write_text(maps)
    return d


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    add_process(root, 10, "/usr/bin/python3.14", [b"python3", b"app.py"])
    add_process(root, 11, "/usr/bin/python3.13", [b"python3.13", b"old.py"])
    add_process(root, 12, "/opt/py/bin/python3.15", [b"python3.15", b"-m", b"srv"])
    add_process(
        root, 13, "/usr/sbin/uwsgi", [b"uwsgi"],
        "7f00 r-xp 0 0:0 1 /usr/lib/x86_64-linux-gnu/libpython3.14.so.1.0\n",
    )  # fmt: skip
    add_process(root, 14, "/usr/bin/bash", [b"bash"], "7f00 r-xp 0 0:0 1 /usr/lib/libc.so.6\n")
    add_process(
        root, 15, "/srv/python3.99/bin/node", [b"node"],  # a version in a directory name
        "7f00 r-xp 0 0:0 1 /srv/my files/libpython3.16.so\n",  # a path with a space
    )  # fmt: skip
    (root / "self").mkdir()
    return root


def test_finds_cpython_314_and_later_by_exe_or_libpython(proc: Path) -> None:
    found = procs.python_processes(str(proc))
    versions = [(p.pid, p.version) for p in found]
    assert versions == [(10, (3, 14)), (12, (3, 15)), (13, (3, 14)), (15, (3, 16))]
    assert found[1].argv == ("python3.15", "-m", "srv")
    assert [p.pid for p in procs.python_processes(str(proc), since=(3, 12))][:2] == [10, 11]


def test_other_users_processes_only_for_root(proc: Path) -> None:
    me = os.geteuid()
    assert procs.python_processes(str(proc), euid=me)  # the stand-ins are ours
    if me != 0:
        assert procs.python_processes(str(proc), euid=me + 1) == []
    else:
        assert procs.python_processes(str(proc), euid=12345) == []
        assert len(procs.python_processes(str(proc), euid=0)) == 4


def test_argv_is_bounded(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    add_process(root, 20, "/usr/bin/python3.14", [b"x" * 1000] * 100)
    (p,) = procs.python_processes(str(root))
    assert len(p.argv) == procs.MAX_ARGV and all(len(a) == procs.MAX_ARG_CHARS for a in p.argv)


def test_the_note_says_which_python_attach_needs(tmp_path: Path) -> None:
    mine = (sys.version_info[0], sys.version_info[1])
    here = f"{mine[0]}.{mine[1]}"
    root = tmp_path / "proc"
    add_process(root, 7, f"/usr/bin/python{here}", [b"python", b"app.py"])
    (root / "7" / "status").write_text("Name:\tpython\nTracerPid:\t0\n")
    (root / "7" / "stat").write_text("7 (python) S 1 " + " ".join(["0"] * 40) + "\n")
    note = ps.no_agent_note(7, mine, mine, str(root))
    if hasattr(sys, "remote_exec"):
        assert note == (True, "no agent yet: 'pyprobes attach 7' starts one")
    elif gdbinject.GDB_SINCE <= mine < gdbinject.GDB_UNTIL:
        if gdbinject.find_gdb() is not None:
            assert note == (True, "no agent yet: 'pyprobes attach 7' starts one (through gdb)")
        else:
            assert note[0] is False and note[1].endswith(gdbinject.INSTALL_HINT)
    else:
        assert note == (False, f"no agent; attach needs pyprobes on {here}")
    assert ps.no_agent_note(7, (3, 99), mine) == (False, "no agent; attach needs pyprobes on 3.99")


def test_rows_escape_what_targets_tell() -> None:
    rows: list[dict[str, object]] = [
        {"pid": 1, "agent": True, "python": "3.14.0\x1b[2J", "clients": 0, "probes": 0,
         "argv": ["python", "a\nb", "\u202eevil"]},
        {"pid": 2, "agent": False, "attachable": False, "python": "3.15", "argv": ["p", "\x07"],
         "note": "no agent; attach needs pyprobes on 3.15"},
        {"pid": 3, "agent": None, "error": "bad\x1b]0;title\x07"},
    ]  # fmt: skip
    text = ps.format_rows(rows)
    assert text.isprintable() is False  # newlines between rows only
    assert all(line.isprintable() for line in text.splitlines())
    lines = text.splitlines()
    assert lines[1].split()[1:5] == ["3.14.0\\x1b[2J", "yes", "0", "0"]
    assert lines[1].endswith("python a\\nb \\u202eevil")
    assert lines[2].endswith("p \\x07  (no agent; attach needs pyprobes on 3.15)")
    assert lines[3].endswith("(bad\\x1b]0;title\\x07)")


def test_terminal_safe() -> None:
    assert terminal_safe("plain text é") == "plain text é"
    assert terminal_safe("a\tb\r\n\x7f\x9b\ud800") == "a\\tb\\r\\n\\x7f\\x9b\\ud800"
    assert terminal_safe("x" * 10, limit=4) == "xxxx..."
