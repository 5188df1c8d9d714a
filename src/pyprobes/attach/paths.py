"""Where agents listen: one Unix socket per process in a private per-user directory.

The directory is ``$XDG_RUNTIME_DIR/pyprobes`` when that variable names a directory, else
``<tempdir>/pyprobes-<uid>``. It is created 0700 and refused when it is a symlink, belongs to
someone else or is open to others; the agent then listens in a fresh private fallback
directory ``<tempdir>/pyprobes-<uid>-<random>`` (``make_fallback_dir``), which nobody can
pre-empt. Each agent's socket is ``<pid>.sock`` in it, mode 0600.

A client looking for the agent of a pid tries its own directory and then the ones the target
would have picked (from the target's ``/proc/PID/environ`` and uid, fallbacks included), so
root can attach to a process of another user and a client with another ``XDG_RUNTIME_DIR``
still finds it. Every directory a client reads is checked first (``open_dir``): a real
directory, not a symlink, owned by the uid it is for (or by us), mode 0700; everything in it
is then read and removed relative to that open descriptor, so a symlink planted by another
user never leads root anywhere else. Only sockets whose process is gone are stale:
``clean_stale`` removes those and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pyprobes.attach.errors import AttachError

DIR_NAME = "pyprobes"
SUFFIX = ".sock"
#: AF_UNIX paths hold 108 bytes with the terminating NUL on Linux.
MAX_SOCKET_PATH = 107
_SOCKET_NAME = re.compile(r"^([1-9][0-9]{0,9})\.sock$")
_TEMP_NAME = re.compile(r"^\.([1-9][0-9]{0,9})-[0-9a-f]+\.tmp$")
#: ``pyprobes-<uid>`` and the fallbacks ``pyprobes-<uid>-<random>`` (as mkdtemp names them).
_USER_DIR_NAME = re.compile(r"^pyprobes-([0-9]{1,10})(?:-[A-Za-z0-9_]{1,64})?$")
RUN_USER = Path("/run/user")


def temp_base() -> str:
    """The temporary directory this process would put its socket directory in."""
    return tempfile.gettempdir()


def runtime_dir(environ: dict[str, str] | None = None, uid: int | None = None) -> Path:
    """The socket directory for ``uid`` (default: ours) under ``environ`` (default: ours)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return Path(xdg, DIR_NAME)
    user = os.geteuid() if uid is None else uid
    base = temp_base() if environ is None else _temp_base_of(env)
    return Path(base, f"{DIR_NAME}-{user}")


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` 0700 if needed; refuse one that is not a private directory of ours."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise AttachError(
            f"cannot create the agent socket directory {path}: {exc.strerror}"
        ) from None
    st = os.lstat(path)
    check_private_dir(path, st)
    return path


def check_private_dir(path: Path, st: os.stat_result) -> None:
    """Raise AttachError unless ``st`` is a directory owned by us with no group/other access."""
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise AttachError(f"{path} must be a directory, not a symlink or a file: remove it")
    if st.st_uid != os.geteuid():
        raise AttachError(
            f"the agent socket directory {path} belongs to uid {st.st_uid}, not to this user"
            f" (uid {os.geteuid()}): remove it, or set XDG_RUNTIME_DIR to a directory of yours"
        )
    if st.st_mode & 0o077:
        raise AttachError(
            f"the agent socket directory {path} is open to other users"
            f" (mode {stat.S_IMODE(st.st_mode):04o}): chmod 700 it"
        )


def make_fallback_dir(base: str | None = None) -> Path:
    """A fresh private directory ``<tempdir>/pyprobes-<uid>-<random>`` (0700, ours alone).

    Used when the usual directory is taken (by another user, or a symlink): ``mkdtemp``
    creates it atomically under a name nobody can guess in advance, so it cannot be
    pre-empted. Clients find it by its prefix and check it like any other.
    """
    directory = base or temp_base()
    try:
        made = Path(tempfile.mkdtemp(prefix=f"{DIR_NAME}-{os.geteuid()}-", dir=directory))
    except OSError as exc:
        raise AttachError(
            f"cannot create a private agent socket directory in {directory}: {exc.strerror}:"
            " set XDG_RUNTIME_DIR (or TMPDIR) to a directory of yours"
        ) from None
    check_private_dir(made, os.lstat(made))
    return made


def is_private(st: os.stat_result, uid: int | None = None) -> bool:
    """Whether ``st`` is a directory (not a link) of ``uid`` or ours, closed to others."""
    owners = {os.geteuid()} if uid is None else {uid, os.geteuid()}
    return stat.S_ISDIR(st.st_mode) and st.st_uid in owners and not st.st_mode & 0o077


def open_dir(path: Path, uid: int | None = None) -> int | None:
    """A descriptor of ``path`` if it is a private socket directory of ``uid`` (or ours).

    The last component is opened with O_NOFOLLOW and checked on the descriptor (fstat), so
    what is checked is what is then read: None for a symlink, a file, a directory of another
    user or one open to others. The caller closes the descriptor.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if is_private(os.fstat(fd), uid):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


@contextlib.contextmanager
def _opened(path: Path, uid: int | None) -> Iterator[int | None]:
    fd = open_dir(path, uid)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _is_socket_at(fd: int, name: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(name, dir_fd=fd).st_mode)
    except OSError:
        return False


def socket_path(pid: int, directory: Path | None = None) -> Path:
    """The socket of the agent of ``pid`` in ``directory`` (default: our runtime dir)."""
    return (directory or runtime_dir()) / f"{pid}{SUFFIX}"


def check_path_length(path: Path) -> None:
    """AF_UNIX paths are short: say how to get a shorter one."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise AttachError(
            f"the agent socket path {path} is longer than {MAX_SOCKET_PATH} bytes: set"
            " XDG_RUNTIME_DIR (or TMPDIR) to a shorter directory"
        )


_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (ours or someone else's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def process_uid(pid: int, proc: str = "/proc") -> int | None:
    """The uid owning process ``pid``, if /proc tells."""
    try:
        return os.stat(f"{proc}/{pid}").st_uid
    except OSError:
        return None


def process_environ(pid: int, proc: str = "/proc") -> dict[str, str]:
    """The environment ``pid`` started with ({} when /proc does not show it to us)."""
    try:
        with open(f"{proc}/{pid}/environ", "rb") as f:
            raw = f.read(1 << 20)
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def fallback_dirs(uid: int, base: str | None = None) -> list[Path]:
    """The fallback directories ``<base>/pyprobes-<uid>-*`` (unchecked: see ``open_dir``)."""
    directory = Path(base or temp_base())
    prefix = f"{DIR_NAME}-{uid}-"
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [directory / n for n in names if n.startswith(prefix) and _USER_DIR_NAME.match(n)]


def _temp_base_of(env: Mapping[str, str]) -> str:
    return next(
        (env[k] for k in ("TMPDIR", "TEMP", "TMP") if env.get(k) and os.path.isdir(env[k])),
        "/tmp",
    )


def candidate_dirs(pid: int, proc: str = "/proc") -> list[Path]:
    """Directories where the agent of ``pid`` may listen, ours first, no duplicates."""
    dirs = [runtime_dir()]
    uid = process_uid(pid, proc)
    env = process_environ(pid, proc)
    owner = uid if uid is not None else os.geteuid()
    if env or uid is not None:
        dirs.append(runtime_dir(env, owner))
        dirs.append(runtime_dir({k: v for k, v in env.items() if k != "XDG_RUNTIME_DIR"}, uid))
    dirs.extend(fallback_dirs(owner))
    if env:
        dirs.extend(fallback_dirs(owner, _temp_base_of(env)))
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find_socket(pid: int, proc: str = "/proc") -> Path | None:
    """The socket of the agent of ``pid`` in a candidate directory that passes the checks."""
    uid = process_uid(pid, proc)
    name = f"{pid}{SUFFIX}"
    for d in candidate_dirs(pid, proc):
        with _opened(d, uid) as fd:
            if fd is not None and _is_socket_at(fd, name):
                return d / name
    return None


@dataclass(frozen=True, slots=True)
class AgentSocket:
    """A socket file found in a checked runtime directory, and who owns that directory."""

    pid: int
    path: Path
    owner: int = -1


@dataclass(frozen=True, slots=True)
class SocketDir:
    """A runtime directory that passed the checks, and the uid it belongs to."""

    path: Path
    uid: int


def list_sockets(directory: Path | None = None, uid: int | None = None) -> list[AgentSocket]:
    """The agent sockets in ``directory`` (default ours), by pid; nothing unless the
    directory is a private one of ``uid`` (or ours), and only real sockets."""
    d = directory or runtime_dir()
    out = []
    with _opened(d, uid) as fd:
        if fd is None:
            return []
        try:
            owner = os.fstat(fd).st_uid
            names = os.listdir(fd)
        except OSError:
            return []
        for name in names:
            m = _SOCKET_NAME.match(name)
            if m and _is_socket_at(fd, name):
                out.append(AgentSocket(int(m.group(1)), d / name, owner))
    return sorted(out, key=lambda s: s.pid)


def all_runtime_dirs(temp: str | None = None, run_user: Path = RUN_USER) -> list[SocketDir]:
    """The socket directories to list: ours and our fallbacks; for root every user's
    (``/run/user/<uid>/pyprobes``, ``<temp>/pyprobes-<uid>`` and their fallbacks).

    Each one must pass ``open_dir`` for the uid in its name: a symlink, a file, a directory
    owned by someone else or open to others is left out (and never touched).
    """
    me = os.geteuid()
    wanted: list[SocketDir] = [SocketDir(runtime_dir(), me)]
    if me == 0:
        with contextlib.suppress(OSError):
            for e in sorted(os.listdir(run_user)):
                if e.isdigit() and len(e) <= 10:
                    wanted.append(SocketDir(run_user / e / DIR_NAME, int(e)))
    base = Path(temp or temp_base())
    with contextlib.suppress(OSError):
        for e in sorted(os.listdir(base)):
            m = _USER_DIR_NAME.match(e)
            if m and (me == 0 or int(m.group(1)) == me):
                wanted.append(SocketDir(base / e, int(m.group(1))))
    out: list[SocketDir] = []
    for d in wanted:
        if any(o.path == d.path for o in out):
            continue
        with _opened(d.path, d.uid) as fd:
            if fd is not None:
                out.append(d)
    return out


def clean_stale(
    directory: Path | None = None, keep: int | None = None, uid: int | None = None
) -> list[int]:
    """Remove the sockets (and half-made temporary ones) of processes that no longer exist.

    Only in a private directory of ``uid`` (or ours), only entries that are sockets (lstat,
    relative to the checked directory's descriptor: a link is never followed), and only when
    their pid is dead. Returns the pids whose socket was removed. ``keep`` is never touched.
    """
    d = directory or runtime_dir()
    removed = []
    with _opened(d, uid) as fd:
        if fd is None:
            return []
        try:
            names = os.listdir(fd)
        except OSError:
            return []
        for name in names:
            m = _SOCKET_NAME.match(name) or _TEMP_NAME.match(name)
            if not m:
                continue
            pid = int(m.group(1))
            if pid == keep or pid_alive(pid) or not _is_socket_at(fd, name):
                continue
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=fd)
                if name.endswith(SUFFIX):
                    removed.append(pid)
    return sorted(removed)


def remove_socket(path: Path, uid: int | None = None) -> bool:
    """Remove the socket ``path`` (one that refused a connection, or of a dead process) if it
    is a socket in a private directory of ``uid`` (or ours); whether it was removed."""
    with _opened(path.parent, uid) as fd:
        if fd is None or not _is_socket_at(fd, path.name):
            return False
        try:
            os.unlink(path.name, dir_fd=fd)
        except OSError:
            return False
    return True
