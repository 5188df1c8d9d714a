# Type stub of the C core (src/pyprobes/_speedups.c); see pyprobes.engine.ccore.
from collections.abc import Callable, Mapping, Sequence
from types import CodeType, FrameType
from typing import Any

from pyprobes.engine import context
from pyprobes.engine.probes import Kprobe, Kretprobe, Probe

_Fallback = Callable[[tuple[object, ...]], str]
_Taken = tuple[str | bytes, dict[int, int], dict[int, int], list[tuple[object, ...]] | None]

HAVE_FRAME_TOKEN: int

class ProbeContext(context.ProbeContext): ...
class KretprobeInstance(context.KretprobeInstance): ...

class Counters:
    nhit: int
    nmissed: int
    nfault: int
    def handlers_changed(self) -> None: ...

class RetState:
    maxactive: int
    def __init__(self, rp: Kretprobe, maxactive: int) -> None: ...
    def reclaim(self) -> int: ...
    def flush(self) -> None: ...
    def kill(self) -> None: ...
    def activations(self) -> list[tuple[int, context.KretprobeInstance]]: ...
    def end(self, fid: int, ri: context.KretprobeInstance) -> bool: ...
    @property
    def nactive(self) -> int: ...
    @property
    def dead(self) -> bool: ...
    @property
    def rp(self) -> Kretprobe | None: ...

class Site: ...

class Program:
    """A probe program run in C (see pyprobes.engine.program)."""

    program: object
    def __init__(
        self,
        lowered: tuple[object, ...],
        program: object,
        key_of: Callable[[object], str],
        make_results: Callable[..., object],
        ring: Ring | None = None,
        probe: int = 0,
    ) -> None: ...
    def take(self) -> object: ...

class Ring:
    """Programs' event records in a bounded ring (see pyprobes.engine.ring)."""

    pending: int
    capacity: int
    def __init__(
        self,
        capacity: int,
        render: Callable[[object], object],
        exception_text: Callable[[BaseException], object],
        wake: Callable[[], object] | None = None,
        link_key: str | None = None,
    ) -> None: ...
    def add_probe(self) -> int: ...
    def take(self) -> tuple[list[tuple[object, ...]], dict[int, int]]: ...
    # take_json, take_text, take_chrome: the records' text (UTF-8 bytes with utf8), the
    # records per probe, the records lost per probe, and the records themselves with keep.
    def take_json(
        self,
        statics: tuple[tuple[str, tuple[str, ...]], ...],
        pid: int,
        fallback: _Fallback,
        keep: bool = False,
        utf8: bool = False,
    ) -> _Taken: ...
    def take_text(
        self,
        statics: tuple[tuple[str, str, tuple[str, ...]], ...],
        pid: int,
        fallback: _Fallback,
        keep: bool = False,
        utf8: bool = False,
    ) -> _Taken: ...
    def take_chrome(
        self,
        statics: tuple[tuple[str, str, str, int, tuple[str, ...]], ...],
        pid: int,
        renderer: object,
        fallback: _Fallback,
        keep: bool = False,
        utf8: bool = False,
    ) -> _Taken: ...
    def clear_after_fork(self) -> None: ...

def set_entry_clock(name: str) -> str: ...
def set_close_emits_nothing(flag: bool) -> None: ...
def frame_var(frame: FrameType, name: str) -> object: ...
def setup(
    *,
    ProbeContext: type[context.ProbeContext],
    KretprobeInstance: type[context.KretprobeInstance],
    DISABLE: object,
    fault: Callable[..., None],
    line_of: Callable[..., int | None],
    pending_insn: dict[int, Any],
    pending_line: dict[int, Any],
    disabled_codes: set[int],
    close_emits_nothing: bool,
) -> None: ...
def make_site(
    *,
    entry: Sequence[Probe],
    offsets: Mapping[int, Sequence[Kprobe]],
    lines: Mapping[int, Sequence[Kprobe]],
    returns: Sequence[Kretprobe],
    post_insn: bool,
    post_line: bool,
    watches_exit: bool,
) -> Site: ...
def set_site(code: CodeType, site: Site | None) -> None: ...
def forget(cid: int) -> None: ...
def clear_sites() -> None: ...
def nsites() -> int: ...
def set_own_threads(idents: tuple[int, ...]) -> None: ...
def text_numbers(ns: int) -> tuple[str, str] | None: ...
def chrome_micros(ns: int) -> float: ...
def on_start(code: CodeType, offset: int) -> object: ...
def on_instruction(code: CodeType, offset: int) -> object: ...
def on_line(code: CodeType, line: int) -> object: ...
def on_return(code: CodeType, offset: int, retval: object) -> object: ...
def on_yield(code: CodeType, offset: int, value: object) -> object: ...
def on_unwind(code: CodeType, offset: int, exc: BaseException) -> object: ...
