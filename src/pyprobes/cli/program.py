"""Running a program as ``__main__`` exactly as ``python script.py`` / ``python -m mod`` would.

Its ``sys.argv``, ``sys.path[0]``, standard streams, exit status and tracebacks (with no frame
of ours in them) are the ones the plain interpreter gives; the difference is a hook that runs
with the program's code object compiled but not started, to arm probes on it.
"""

from __future__ import annotations

import builtins
import importlib.util
import io
import os
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from types import CodeType, TracebackType

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYBOARD_INTERRUPT = -2  # exit status meaning: die by SIGINT as the interpreter does


class ProgramError(Exception):
    """The program cannot be started (missing file, unknown module): message and exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Program:
    """A program ready to run: its code, the names it runs under, argv and sys.path[0]."""

    code: CodeType
    names: tuple[str, ...]
    path: str
    argv: list[str]
    path0: str
    spec: ModuleSpec | None = None


def load_script(path: str, args: list[str]) -> Program:
    """Compile a script file as ``python path args...`` would run it."""
    try:
        with io.open_code(path) as f:
            source = f.read()
    except OSError as exc:
        raise ProgramError(
            f"can't open file {os.path.abspath(path)!r}: [Errno {exc.errno}] {exc.strerror}"
        ) from None
    # As python does since 3.9: __file__ and the code's filename are absolute, argv[0] as given.
    filename = os.path.abspath(path)
    code = compile(source, filename, "exec", dont_inherit=True)
    path0 = os.path.dirname(os.path.realpath(path))
    return Program(code, ("__main__",), filename, [path, *args], path0)


def load_module(name: str, args: list[str]) -> Program:
    """Find and compile a module as ``python -m name args...`` would run it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise ProgramError(
            f"Error while finding module specification for {name!r} ({exc})", 1
        ) from None
    if spec is None:
        raise ProgramError(f"No module named {name}", 1)
    if spec.submodule_search_locations is not None:
        main_name = f"{name}.__main__"
        spec = importlib.util.find_spec(main_name)
        if spec is None:
            raise ProgramError(
                f"No module named {main_name}; {name!r} is a package and cannot be"
                " directly executed",
                1,
            )
        name = main_name
    loader = spec.loader
    get_code = getattr(loader, "get_code", None)
    code = get_code(name) if get_code is not None else None
    if code is None:
        raise ProgramError(f"No code object available for {name}", 1)
    origin = spec.origin or name
    return Program(code, ("__main__", name), origin, [origin, *args], os.getcwd(), spec)


def _trim(tb: TracebackType | None) -> TracebackType | None:
    """Drop the leading traceback entries that are pyprobes' own frames."""
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        tb = tb.tb_next
    return tb


def _exit_status(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _join_threads() -> None:
    """Wait for the program's non-daemon threads, as the interpreter does before exiting."""
    me = threading.current_thread()
    while True:
        others = [t for t in threading.enumerate() if t is not me and not t.daemon and t.is_alive()]
        if not others:
            return
        for t in others:
            t.join()


def set_path0(program: Program) -> None:
    """Make ``sys.path[0]`` the program's, as python does (idempotent): done before probes
    are armed too, so that specs find the program's own modules as ``check`` does."""
    if sys.path:
        sys.path[0] = program.path0
    else:
        sys.path.insert(0, program.path0)


def run(program: Program, before: Callable[[CodeType], None]) -> int:
    """Run the program in this process as ``__main__``; returns its exit status."""
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=program.path,
        __builtins__=builtins,
        __spec__=program.spec,
        __loader__=program.spec.loader if program.spec is not None else None,
        __package__=(program.spec.parent if program.spec is not None else None),
        __cached__=None,
    )
    sys.modules["__main__"] = main
    sys.argv = list(program.argv)
    set_path0(program)
    before(program.code)
    try:
        exec(program.code, main.__dict__)
    except SystemExit as exc:
        return _exit_status(exc)
    except BaseException as exc:
        tb = _trim(exc.__traceback__)
        exc.__traceback__ = tb
        sys.excepthook(type(exc), exc, tb)
        return KEYBOARD_INTERRUPT if isinstance(exc, KeyboardInterrupt) else 1
    try:
        _join_threads()
    except KeyboardInterrupt:
        return KEYBOARD_INTERRUPT
    return 0
