"""The probe objects users fill in and register: Kprobe, Jprobe, Kretprobe (kernel structs)."""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from types import CodeType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pyprobes.engine.context import KretprobeInstance, ProbeContext

if TYPE_CHECKING:
    from pyprobes.engine.resolve import Location

PreHandler = Callable[["Kprobe", ProbeContext], object]
PostHandler = Callable[["Kprobe", ProbeContext, int], object]
FaultHandler = Callable[["Probe", ProbeContext, BaseException], object]
RetHandler = Callable[[KretprobeInstance, ProbeContext], object]


#: The handler attributes the hit reads; a change to one is told to the probe's counters.
HANDLER_NAMES = frozenset({"pre_handler", "post_handler", "entry", "handler", "entry_handler"})


class ProbeCounters(Protocol):
    """What the core that registers a probe attaches to it (``Probe._counters``): its hit,
    miss and fault counters (ints, assignable), and the hook told of a change to a handler
    attribute (``handlers_changed``), for a core that caches the handlers (the C core's cache;
    3.13 does not report attribute stores to dict watchers)."""

    nhit: int
    nmissed: int
    nfault: int

    def handlers_changed(self) -> None: ...


class Counters:
    """The pure-Python core's counters, and every probe's before it is first registered:
    plain int attributes."""

    __slots__ = ("nfault", "nhit", "nmissed")

    def __init__(self) -> None:
        self.nhit = 0
        self.nmissed = 0
        self.nfault = 0

    def handlers_changed(self) -> None:
        """Nothing to do: the Python core reads the handlers at every hit."""


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise TypeError(f"a probe's counters are ints, not {type(value).__name__}")
    return value


class Probe:
    """Fields, counters and state shared by every probe kind.

    The registry owns the private fields (under its lock); the hot path reads the site tables
    the core built from them at registration and the public counters and handlers, so a probe
    object may be inspected from any thread at any time. The counters live in the object the
    registering core attached (``_counters``): the classes are the same whichever core runs.
    """

    kind: ClassVar[str] = "?"
    _counters: ProbeCounters

    @property
    def nhit(self) -> int:
        """Hits since registration (an int; assignable)."""
        return self._counters.nhit

    @nhit.setter
    def nhit(self, value: int) -> None:
        self._counters.nhit = _int(value)

    @property
    def nmissed(self) -> int:
        """Kretprobe entries missed for want of a free instance (an int; assignable)."""
        return self._counters.nmissed

    @nmissed.setter
    def nmissed(self, value: int) -> None:
        self._counters.nmissed = _int(value)

    @property
    def nfault(self) -> int:
        """Handler calls that raised (an int; assignable)."""
        return self._counters.nfault

    @nfault.setter
    def nfault(self, value: int) -> None:
        self._counters.nfault = _int(value)

    def __init__(
        self,
        *,
        symbol_name: str | None,
        addr: object,
        filename: str | None,
        offset: int,
        line: int | None,
        disabled: bool,
    ) -> None:
        self._counters = Counters()
        self.symbol_name = symbol_name
        self._addr: object = addr
        self._addr_is_weak = False
        self.filename = filename
        self.offset = offset
        self.line = line
        self.fault_handler: FaultHandler | None = None
        self._disabled = bool(disabled)
        # Registry state (guarded by the registry lock).
        self._registered = False
        self._seq = -1
        self._location: Location | None = None
        self._gone = False
        self._fault_reported = False

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in HANDLER_NAMES:
            self._counters.handlers_changed()

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if name in HANDLER_NAMES:
            self._counters.handlers_changed()

    # addr is kept weakly once registered, so that a probe never keeps its code alive
    # (a probed code object that is collected makes the probe GONE, as module unload does).
    @property
    def addr(self) -> object:
        """The function or code object probed by address (``None`` once it was collected)."""
        if self._addr_is_weak:
            return self._addr()  # type: ignore[operator]
        return self._addr

    @addr.setter
    def addr(self, value: object) -> None:
        self._addr = value
        self._addr_is_weak = False

    def _weaken_addr(self) -> None:
        if self._addr is not None and not self._addr_is_weak:
            if isinstance(self._addr, types.MethodType):
                self._addr = self._addr.__func__  # a bound method object dies at once
            try:
                self._addr = weakref.ref(self._addr)
                self._addr_is_weak = True
            except TypeError:
                pass  # not weak-referenceable (e.g. a bound method is unwrapped earlier)

    @property
    def disabled(self) -> bool:
        """True if the probe is disarmed by ``disable_kprobe`` (it stays registered)."""
        return self._disabled

    @disabled.setter
    def disabled(self, value: bool) -> None:
        from pyprobes.engine import registry

        if value:
            registry.disable_kprobe(self)
        else:
            registry.enable_kprobe(self)

    @property
    def registered(self) -> bool:
        """True between a successful register and the matching unregister."""
        return self._registered

    @property
    def gone(self) -> bool:
        """True if the probed code object was collected (listed ``[GONE]``)."""
        from pyprobes.engine import registry

        registry.process_dead_code()
        return self._gone

    @property
    def pending(self) -> bool:
        """True if registered but waiting for its module or file to be imported."""
        return self._registered and self._location is None and not self._gone

    @property
    def code(self) -> CodeType | None:
        """The code object the probe is armed on, if any."""
        loc = self._location
        return loc.code if loc is not None else None

    def _describe(self) -> str:
        if self.symbol_name is not None:
            where = self.symbol_name
        elif self.filename is not None:
            where = self.filename
        else:
            a = self.addr
            where = getattr(a, "__qualname__", None) or getattr(a, "co_qualname", None) or repr(a)
        if self.line is not None:
            return f"{where}:{self.line}"
        if self.offset:
            return f"{where}+{self.offset}"
        return str(where)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._describe()}>"


class Kprobe(Probe):
    """A handler before (and optionally after) one instruction, line or function entry."""

    kind = "k"

    def __init__(
        self,
        symbol_name: str | None = None,
        addr: object = None,
        filename: str | None = None,
        offset: int = 0,
        line: int | None = None,
        pre_handler: PreHandler | None = None,
        post_handler: PostHandler | None = None,
        fault_handler: FaultHandler | None = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(
            symbol_name=symbol_name,
            addr=addr,
            filename=filename,
            offset=offset,
            line=line,
            disabled=disabled,
        )
        self.pre_handler = pre_handler
        self.post_handler = post_handler
        self.fault_handler = fault_handler


class Jprobe(Probe):
    """A handler with the probed function's signature, called at entry with its arguments."""

    kind = "j"

    def __init__(
        self,
        entry: Callable[..., object],
        symbol_name: str | None = None,
        addr: object = None,
        disabled: bool = False,
    ) -> None:
        super().__init__(
            symbol_name=symbol_name,
            addr=addr,
            filename=None,
            offset=0,
            line=None,
            disabled=disabled,
        )
        self.entry = entry


class Kretprobe(Probe):
    """A handler when the probed function returns or raises, paired with its entry."""

    kind = "r"

    def __init__(
        self,
        symbol_name: str | None = None,
        addr: object = None,
        filename: str | None = None,
        handler: RetHandler | None = None,
        entry_handler: RetHandler | None = None,
        maxactive: int = 0,
        disabled: bool = False,
        fault_handler: FaultHandler | None = None,
        offset: int = 0,
        line: int | None = None,
    ) -> None:
        super().__init__(
            symbol_name=symbol_name,
            addr=addr,
            filename=filename,
            offset=offset,
            line=line,
            disabled=disabled,
        )
        self.handler = handler
        self.entry_handler = entry_handler
        self.fault_handler = fault_handler
        self.maxactive = maxactive
        # Pool and live activations: owned by the core, replaced whole on (un)register.
        self._rstate: Any = None

    @property
    def nactive(self) -> int:
        """Instances in use right now (abandoned generators are reclaimed first)."""
        from pyprobes.engine import registry

        return registry.count_active(self)
