"""What a handler is given: the probe context (our ``pt_regs``) and return-probe instances."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyprobes.engine.probes import Kretprobe

CO_VARARGS = 0x04
CO_VARKEYWORDS = 0x08

_UNSET: Any = object()

#: ids of the code objects of the engine's sys.monitoring callbacks: the frame just below the
#: nearest one on the stack is the probed frame. Filled by the core that installs them. Keyed by
#: id because hashing a code object re-hashes its bytecode every time (3.12, 3.13).
CALLBACK_CODE_IDS: set[int] = set()


def find_probed_frame() -> FrameType | None:
    """Return the probed frame: the caller of the nearest engine callback on this stack."""
    f: FrameType | None = sys._getframe(1)
    while f is not None:
        if id(f.f_code) in CALLBACK_CODE_IDS:
            return f.f_back
        f = f.f_back
    return None


def parameter_names(code: CodeType) -> tuple[str, ...]:
    """Names of a code object's parameters in signature order, ``*args``/``**kwargs`` included."""
    names = code.co_varnames
    n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
    i = n_pos + n_kw
    star = names[i : i + 1] if code.co_flags & CO_VARARGS else ()
    i += len(star)
    dstar = names[i : i + 1] if code.co_flags & CO_VARKEYWORDS else ()
    return names[:n_pos] + star + names[n_pos : n_pos + n_kw] + dstar


def _read_local_via_proxy(frame: FrameType, name: str) -> object:
    return frame.f_locals[name]  # 3.13+: a proxy over the frame, no snapshot is touched


def _frame_var_or_proxy() -> Callable[[FrameType, str], object]:
    # 3.12: frame.f_locals refreshes the dict that locals() returned to the program (it
    # would see values change under it); PyFrame_GetVar reads the frame itself.
    try:
        from pyprobes._speedups import frame_var
    except ImportError:  # no C module built: f_locals it is (a documented limit)
        return _read_local_via_proxy
    return frame_var


if sys.version_info >= (3, 13):
    #: ``read_local(frame, name)``: a local or cell of ``frame`` (KeyError if unbound), read
    #: without changing anything the program can see.
    read_local: Callable[[FrameType, str], object] = _read_local_via_proxy
else:
    _read_local_312: Callable[[FrameType, str], object] | None = None

    def read_local(frame: FrameType, name: str) -> object:
        """A local or cell of ``frame`` (KeyError if unbound), read without changing anything
        the program can see: on 3.12 by the C module's frame_var, loaded at the first read
        (importing the probe language loads no C extension)."""
        global _read_local_312
        impl = _read_local_312
        if impl is None:
            impl = _read_local_312 = _frame_var_or_proxy()
        return impl(frame, name)


def read_args(frame: FrameType) -> dict[str, object]:
    """Copy the current values of the frame's parameters (never the live locals mapping)."""
    out: dict[str, object] = {}
    for name in parameter_names(frame.f_code):
        try:
            out[name] = read_local(frame, name)
        except KeyError:  # deleted by the function itself
            pass
    return out


class ProbeContext:
    """The state of the probed program at a hit; fields that cost are read on first access.

    Valid only while the handler runs: ``frame`` and ``args`` read after the handler returned
    give ``None`` and ``{}`` unless they were read during it. ``time_ns`` is
    ``time.perf_counter_ns()`` and ``thread_id`` is ``threading.get_ident()``, both taken when
    first read (during the handler, on the probed thread).
    """

    __slots__ = (
        "_args",
        "_frame",
        "_lineno",
        "_offset",
        "_thread_id",
        "_time_ns",
        "code",
        "exception",
        "retval",
    )

    def __init__(
        self, code: CodeType, offset: int = -1, lineno: int = -1, frame: Any = _UNSET
    ) -> None:
        self.code = code
        self._offset = offset
        self._lineno = lineno
        self._frame = frame
        self._args: dict[str, object] | None = None
        self._thread_id = 0
        self._time_ns = 0
        self.retval: object = None
        self.exception: BaseException | None = None

    @property
    def frame(self) -> FrameType | None:
        """The probed frame (live: do not keep it beyond the handler)."""
        f = self._frame
        if f is _UNSET:
            f = self._frame = find_probed_frame()
        return f  # type: ignore[no-any-return]

    @property
    def offset(self) -> int:
        """Bytecode offset of the hit, as ``dis`` shows it."""
        if self._offset < 0:
            f = self.frame
            self._offset = f.f_lasti if f is not None else 0
        return self._offset

    @property
    def lineno(self) -> int | None:
        """Source line of the hit."""
        if self._lineno < 0:
            f = self.frame
            line = f.f_lineno if f is not None else None
            self._lineno = line if line is not None else (_line_of(self.code, self.offset) or 0)
        return self._lineno

    @property
    def args(self) -> dict[str, object]:
        """A copy of the function's parameters (at entry: exactly the call's arguments)."""
        if self._args is None:
            f = self.frame
            self._args = read_args(f) if f is not None else {}
        return self._args

    @property
    def thread_id(self) -> int:
        """``threading.get_ident()`` of the probed thread."""
        if not self._thread_id:
            self._thread_id = threading.get_ident()
        return self._thread_id

    @property
    def time_ns(self) -> int:
        """``time.perf_counter_ns()`` at the hit (taken when first read in the handler)."""
        if not self._time_ns:
            self._time_ns = time.perf_counter_ns()
        return self._time_ns

    def seal(self) -> None:
        """Detach from the stack once handlers ran: lazy frame reads now give ``None``."""
        if self._frame is _UNSET:
            self._frame = None

    def __repr__(self) -> str:
        return f"<ProbeContext {self.code.co_qualname} offset={self._offset} line={self._lineno}>"


def _line_of(code: CodeType, offset: int) -> int | None:
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return None


def regs_return_value(ctx: ProbeContext) -> object:
    """The return value at a return probe, as the kernel's ``regs_return_value(regs)``."""
    return ctx.retval


class KretprobeInstance:
    """One tracked activation of a return-probed function (the kernel's kretprobe_instance).

    Instances are recycled from the probe's pool of ``maxactive``: do not keep one beyond the
    return handler. ``data`` is a fresh empty dict per activation, shared by its entry and
    return handlers.
    """

    __slots__ = ("_data", "entry_time_ns", "frame", "rp", "thread_id")

    def __init__(self, rp: Kretprobe) -> None:
        self.rp = rp
        self._data: dict[str, Any] | None = None
        self.thread_id = 0
        self.entry_time_ns = 0
        self.frame: FrameType | None = None

    @property
    def data(self) -> dict[str, Any]:
        """Per-activation private data (the kernel's ``data_size`` area)."""
        d = self._data
        if d is None:
            d = self._data = {}
        return d

    def __repr__(self) -> str:
        return f"<KretprobeInstance of {self.rp!r} thread={self.thread_id}>"
