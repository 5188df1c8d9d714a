"""Where agents listen: one Unix socket per process in a private per-user directory.

The directory is ``$XDG_RUNTIME_DIR/pyprobes`` when that variable names a directory, else
``<tempdir>/pyprobes-<uid>``. It is created 0700 and refused when it is a symlink, belongs to
someone else or is open to others. Each agent's socket is ``<pid>.sock`` in it, mode 0600.

A client looking for the agent of a pid tries its own directory and then the ones the target
would have picked (from the target's ``/proc/PID/environ`` and uid), so root can attach to a
process of another user and a client with another ``XDG_RUNTIME_DIR`` still finds it.
Sockets whose process is gone are stale: ``clean_stale`` removes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyprobes.attach.errors import AttachError

DIR_NAME = "pyprobes"
SUFFIX = ".sock"
#: AF_UNIX paths hold 108 bytes with the terminating NUL on Linux.
MAX_SOCKET_PATH = 107
_SOCKET_NAME = re.compile(r"^([1-9][0-9]{0,9})\.sock$")
_TEMP_NAME = re.compile(r"^\.([1-9][0-9]{0,9})-[0-9a-f]+\.tmp$")


def runtime_dir(environ: dict[str, str] | None = None, uid: int | None = None) -> Path:
    """The socket directory for ``uid`` (default: ours) under ``environ`` (default: ours)."""
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        return Path(xdg, DIR_NAME)
    user = os.geteuid() if uid is None else uid
    if environ is None:
        base = tempfile.gettempdir()
    else:
        base = next(
            (env[k] for k in ("TMPDIR", "TEMP", "TMP") if env.get(k) and os.path.isdir(env[k])),
            "/tmp",
        )
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


def candidate_dirs(pid: int, proc: str = "/proc") -> list[Path]:
    """Directories where the agent of ``pid`` may listen, ours first, no duplicates."""
    dirs = [runtime_dir()]
    uid = process_uid(pid, proc)
    env = process_environ(pid, proc)
    if env or uid is not None:
        dirs.append(runtime_dir(env, uid if uid is not None else os.geteuid()))
        dirs.append(runtime_dir({k: v for k, v in env.items() if k != "XDG_RUNTIME_DIR"}, uid))
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def find_socket(pid: int, proc: str = "/proc") -> Path | None:
    """The socket of the agent of ``pid`` if one exists in any candidate directory."""
    for d in candidate_dirs(pid, proc):
        path = socket_path(pid, d)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            return path
    return None


@dataclass(frozen=True, slots=True)
class AgentSocket:
    """A socket file found in a runtime directory."""

    pid: int
    path: Path


def list_sockets(directory: Path | None = None) -> list[AgentSocket]:
    """The agent sockets in ``directory`` (default ours), by pid."""
    d = directory or runtime_dir()
    try:
        names = os.listdir(d)
    except OSError:
        return []
    out = []
    for name in names:
        m = _SOCKET_NAME.match(name)
        if m:
            out.append(AgentSocket(int(m.group(1)), d / name))
    return sorted(out, key=lambda s: s.pid)


def all_runtime_dirs() -> list[Path]:
    """Our directory and, for root, every user's (``/run/user/*``, ``<tmp>/pyprobes-*``)."""
    dirs = [runtime_dir()]
    if os.geteuid() == 0:
        for pattern_dir, prefix in (
            (Path("/run/user"), None),
            (Path(tempfile.gettempdir()), DIR_NAME + "-"),
        ):
            try:
                entries = sorted(os.listdir(pattern_dir))
            except OSError:
                continue
            for e in entries:
                if prefix is None:
                    dirs.append(pattern_dir / e / DIR_NAME)
                elif e.startswith(prefix) and e[len(prefix) :].isdigit():
                    dirs.append(pattern_dir / e)
    out: list[Path] = []
    for d in dirs:
        if d not in out and d.is_dir():
            out.append(d)
    return out


def clean_stale(directory: Path | None = None, keep: int | None = None) -> list[int]:
    """Remove the sockets (and half-made temporary ones) of processes that no longer exist.

    Returns the pids whose socket was removed. ``keep`` is never touched (our own pid).
    """
    d = directory or runtime_dir()
    try:
        names = os.listdir(d)
    except OSError:
        return []
    removed = []
    for name in names:
        m = _SOCKET_NAME.match(name) or _TEMP_NAME.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == keep or pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(d / name)
            if name.endswith(SUFFIX):
                removed.append(pid)
    return sorted(removed)
