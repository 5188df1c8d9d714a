"""Socket directory and names, private permissions, finding and cleaning sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyprobes.attach import paths
from pyprobes.attach.errors import AttachError


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def make_socket_file(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def test_runtime_dir_prefers_xdg(tmp_path: Path) -> None:
    assert paths.runtime_dir({"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "pyprobes"
    # not set, relative, or missing: the temp dir with the uid in the name
    for env in ({}, {"XDG_RUNTIME_DIR": "rel"}, {"XDG_RUNTIME_DIR": str(tmp_path / "gone")}):
        assert paths.runtime_dir(env, uid=1234) == Path("/tmp/pyprobes-1234")
    assert paths.runtime_dir({"TMPDIR": str(tmp_path)}, uid=7) == tmp_path / "pyprobes-7"


def test_runtime_dir_of_this_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == tmp_path / "pyprobes"
    assert paths.socket_path(42) == tmp_path / "pyprobes" / "42.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    import tempfile

    assert paths.runtime_dir() == Path(tempfile.gettempdir(), f"pyprobes-{os.geteuid()}")


def test_private_dir_is_created_0700_and_checked(tmp_path: Path) -> None:
    d = paths.ensure_private_dir(tmp_path / "a" / "pyprobes")
    assert (d.stat().st_mode & 0o777) == 0o700
    paths.ensure_private_dir(d)  # exists and fine
    os.chmod(d, 0o755)
    with pytest.raises(AttachError, match=r"open to other users \(mode 0755\): chmod 700 it"):
        paths.ensure_private_dir(d)
    link = tmp_path / "link"
    link.symlink_to(d)
    with pytest.raises(AttachError, match="must be a directory, not a symlink"):
        paths.ensure_private_dir(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_private_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "pyprobes"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(AttachError, match="belongs to uid 65534, not to this user"):
        paths.ensure_private_dir(d)


def test_socket_path_length_is_checked() -> None:
    paths.check_path_length(Path("/run/user/1000/pyprobes/12345.sock"))
    with pytest.raises(AttachError, match="longer than 107 bytes: set XDG_RUNTIME_DIR"):
        paths.check_path_length(Path("/" + "x" * 120, "1.sock"))


def test_pid_alive() -> None:
    assert paths.pid_alive(os.getpid())
    assert paths.pid_alive(1)
    assert not paths.pid_alive(dead_pid())
    assert not paths.pid_alive(0) and not paths.pid_alive(-5)


def test_list_and_clean_stale(tmp_path: Path) -> None:
    dead = dead_pid()
    make_socket_file(tmp_path / f"{dead}.sock")
    make_socket_file(tmp_path / f"{os.getpid()}.sock")
    (tmp_path / f".{dead}-abcd.tmp").write_text("")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "0.sock").write_text("")
    found = paths.list_sockets(tmp_path)
    assert sorted(s.pid for s in found) == sorted([dead, os.getpid()])
    assert paths.clean_stale(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{os.getpid()}.sock", "notes.txt", "0.sock"]
    )
    assert paths.list_sockets(tmp_path / "missing") == []
    assert paths.clean_stale(tmp_path / "missing") == []


def test_find_socket_looks_where_the_target_would_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    (theirs / "pyprobes").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(mine))
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "XDG_RUNTIME_DIR": str(theirs)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"up\n"  # exec'd: /proc shows its own environment
        assert paths.process_environ(child.pid)["XDG_RUNTIME_DIR"] == str(theirs)
        assert paths.process_uid(child.pid) == os.geteuid()
        assert paths.candidate_dirs(child.pid)[:2] == [mine / "pyprobes", theirs / "pyprobes"]
        assert paths.find_socket(child.pid) is None
        make_socket_file(theirs / "pyprobes" / f"{child.pid}.sock")
        assert paths.find_socket(child.pid) == theirs / "pyprobes" / f"{child.pid}.sock"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert paths.process_environ(child.pid) == {}
    assert paths.process_uid(child.pid) is None
