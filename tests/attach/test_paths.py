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
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    dead, dead2 = dead_pid(), dead_pid()
    make_socket_file(d / f"{dead}.sock")
    make_socket_file(d / f"{os.getpid()}.sock")
    make_socket_file(d / f".{dead}-abcd.tmp")
    (d / f"{dead2}.sock").write_text("")  # named like a socket, but a file: never removed
    (d / f".{dead2}-beef.tmp").write_text("")
    (d / "notes.txt").write_text("")
    (d / "0.sock").write_text("")
    found = paths.list_sockets(d)
    assert [s.pid for s in found] == sorted([dead, os.getpid()])  # real sockets only
    assert {s.owner for s in found} == {os.geteuid()}
    assert paths.clean_stale(d) == [dead]
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"{os.getpid()}.sock", f"{dead2}.sock", f".{dead2}-beef.tmp", "notes.txt", "0.sock"]
    )
    assert paths.list_sockets(d / "missing") == []
    assert paths.clean_stale(d / "missing") == []
    os.chmod(d, 0o755)  # open to others: not a directory of ours to read or clean
    assert paths.list_sockets(d) == [] and paths.clean_stale(d, keep=0) == []


def stale_files(d: Path) -> tuple[list[str], str]:
    """A stale socket, a file named like one and a half-made temp file, all of dead pids:
    every name, and the stale socket's."""
    dead = dead_pid()
    make_socket_file(d / f"{dead}.sock")
    (d / f"{dead_pid()}.sock").write_text("precious")
    (d / f".{dead}-abcd.tmp").write_text("precious")
    return sorted(p.name for p in d.iterdir()), f"{dead}.sock"


def test_a_symlinked_directory_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyprobes.cli import ps

    victim = tmp_path / "victim"  # a private directory of ours that a link points at
    victim.mkdir(mode=0o700)
    names, sock = stale_files(victim)
    base = tmp_path / "tmp"
    base.mkdir()
    me = os.geteuid()
    for uid in {me, 1001}:
        (base / f"pyprobes-{uid}").symlink_to(victim)
        (base / f"pyprobes-{uid}-abc123").symlink_to(victim)
    (tmp_path / "xdg").mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert paths.all_runtime_dirs(str(base), run_user=tmp_path / "none") == []
    for link in base.iterdir():
        assert paths.open_dir(link) is None
        assert paths.list_sockets(link) == [] and paths.clean_stale(link) == []
        assert not paths.remove_socket(link / sock)
    (tmp_path / "proc").mkdir()
    assert ps.collect(str(tmp_path / "proc"), str(base), run_user=tmp_path / "none") == []
    assert sorted(p.name for p in victim.iterdir()) == names  # nothing removed


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_root_checks_whose_directory_it_is(tmp_path: Path) -> None:
    base = tmp_path / "tmp"
    base.mkdir()
    run_user = tmp_path / "run-user"

    def user_dir(path: Path, uid: int, mode: int = 0o700) -> tuple[list[str], str]:
        path.mkdir(parents=True)
        made = stale_files(path)
        os.chown(path, uid, uid)
        os.chmod(path, mode)
        return made

    wrong_owner = user_dir(base / "pyprobes-1001", 65534)  # not the uid it is named for
    wrong_fallback = user_dir(base / "pyprobes-1001-xyz", 65534)
    open_mode = user_dir(base / "pyprobes-65533", 65533, 0o755)
    theirs = user_dir(base / "pyprobes-65534", 65534)
    fallback = user_dir(base / "pyprobes-65534-abc_12", 65534)
    xdg = user_dir(run_user / "65534" / "pyprobes", 65534)
    xdg_wrong = user_dir(run_user / "1001" / "pyprobes", 65534)
    dirs = [d for d in paths.all_runtime_dirs(str(base), run_user) if tmp_path in d.path.parents]
    assert [(d.path, d.uid) for d in dirs] == [
        (run_user / "65534" / "pyprobes", 65534),
        (base / "pyprobes-65534", 65534),
        (base / "pyprobes-65534-abc_12", 65534),
    ]
    for d in dirs:
        assert len(paths.clean_stale(d.path, uid=d.uid)) == 1  # the real stale socket only
    for path, uid, (before, _) in [
        (base / "pyprobes-1001", 1001, wrong_owner),
        (base / "pyprobes-1001-xyz", 1001, wrong_fallback),
        (base / "pyprobes-65533", 65533, open_mode),
        (run_user / "1001" / "pyprobes", 1001, xdg_wrong),
    ]:
        assert paths.clean_stale(path, uid=uid) == [] and paths.list_sockets(path, uid) == []
        assert sorted(p.name for p in path.iterdir()) == before  # untouched
    for path, (before, sock) in [
        (base / "pyprobes-65534", theirs),
        (base / "pyprobes-65534-abc_12", fallback),
        (run_user / "65534" / "pyprobes", xdg),
    ]:
        assert sorted(p.name for p in path.iterdir()) == [n for n in before if n != sock]
