"""Which dispatch core runs the hot path: ``ccore`` (C) or ``pycore`` (pure Python).

One core serves the whole process, chosen when the registry is imported (``registry.use_core``
changes it while nothing is registered, for tests):

- ``PYPROBES_CORE=python``: the pure-Python core, always available.
- ``PYPROBES_CORE=c``: the C core; an ImportError if ``pyprobes._speedups`` is not built (tests
  and benchmarks rely on getting the core they asked for).
- unset or empty: the C core when ``pyprobes._speedups`` imports, else the Python one.

``pyprobes.core_name()`` tells which one runs, and the listing's header shows it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from types import CodeType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pyprobes.engine.probes import Kretprobe, Probe, ProbeCounters
    from pyprobes.engine.program import KeyOf, Program
    from pyprobes.engine.resolve import Location

ENV = "PYPROBES_CORE"
CHOICES = ("c", "python")


class Core(Protocol):
    """The interface the registry drives; ``pycore`` and ``ccore`` each provide it, as modules.

    Every method is cold and called by the registry with its lock (``registry._lock``) held,
    on whichever thread registers, unregisters or changes a probe, unless its docstring says
    otherwise. The hot path (the sys.monitoring callbacks a core registers in ``install``) runs
    on any thread, takes no lock, and reads only what ``publish`` built. The cold state both
    cores share (sites, pending post handlers, pools under the gc and fork hooks, faults) is in
    ``pyprobes.engine.shared``; neither core imports the other.
    """

    #: ``"python"`` or ``"c"`` (``pyprobes.core_name()``).
    NAME: str

    def new_counters(self) -> ProbeCounters:
        """Fresh zeroed counters for a probe being registered (``Probe._counters``): what the
        callbacks increment. Registry lock held."""
        ...

    def install(self, tool_id: int) -> None:
        """Register the callbacks on ``tool_id``, which the registry acquired (and measured the
        quirks on) for the first registration. Registry lock held."""
        ...

    def uninstall(self) -> None:
        """Remove the callbacks and global events and forget every table and pending post
        handler; every site was unpublished before. Registry lock held, after the last
        unregistration."""
        ...

    def publish(self, code: CodeType, items: Sequence[tuple[Probe, Location]]) -> None:
        """Arm exactly ``items`` (enabled probes, in registration order; empty: disarm) on
        ``code``: its table is replaced whole, so a callback running on another thread sees the
        old one or the new one. Registry lock held; ``commit`` follows a batch."""
        ...

    def commit(self) -> None:
        """Apply what a batch of ``publish``/``forget`` needs beyond each code (the global
        PY_UNWIND event, re-arming places a callback answered DISABLE for). Registry lock
        held."""
        ...

    def forget(self, cid: int) -> None:
        """Drop what is kept for the collected code object whose id was ``cid`` (seen by a
        weakref callback, processed later). Registry lock held."""
        ...

    def new_ret_state(self, rp: Kretprobe, maxactive: int) -> Any:
        """A fresh return-probe pool for ``rp`` being armed (``rp._rstate``), under the shared
        gc and fork hooks. Registry lock held."""
        ...

    def drop_ret_state(self, state: Any) -> None:
        """Forget a pool (None: nothing): its activations end without handlers (unregister,
        disable); a callback still holding it sees it as gone. Registry lock held."""
        ...

    def nactive(self, state: Any) -> int:
        """Instances of a pool in use, after reclaiming activations that can never end. Any
        thread, no lock (``Kretprobe.nactive``)."""
        ...

    def program_handler(
        self, prog: Program, key_of: KeyOf | None = None, ring: object = None, probe: int = 0
    ) -> object:
        """A handler that runs ``prog`` at each hit (written into ``ring``, from this core's
        ``record_ring``, as probe ``probe``). Any thread, no lock: nothing is registered."""
        ...

    def record_ring(
        self,
        capacity: int,
        render: Callable[[object], object],
        exception_text: Callable[[BaseException], object],
        wake: Callable[[], object] | None = None,
        link_key: str | None = None,
    ) -> Any:
        """A bounded ring of this core's programs' event records (a return's record also keeps
        ``ri.data.get(link_key)`` when ``link_key`` is given). Any thread, no lock."""
        ...

    def set_own_threads(self, idents: Iterable[int]) -> None:
        """The threads on which no probe fires (pyprobes' own), replacing the previous set at
        once. Called under the registry's own-threads lock (not the registry lock), and in a
        forked child."""
        ...


def select(env: str | None = None) -> Core:
    """The core asked for by ``PYPROBES_CORE`` (or ``env``), or the best one available."""
    want = (os.environ.get(ENV, "") if env is None else env).strip().lower()
    if want not in ("", *CHOICES):
        raise ImportError(f"{ENV}={want!r} is not a pyprobes core; use one of {', '.join(CHOICES)}")
    if want == "python":
        from pyprobes.engine import pycore

        return pycore
    try:
        from pyprobes.engine import ccore
    except ImportError as exc:
        if want == "c":
            raise ImportError(
                f"{ENV}=c but the C core (pyprobes._speedups) is not available: {exc}; build it"
                " with 'pip install -e .' (needs a C compiler) or unset the variable"
            ) from exc
        from pyprobes.engine import pycore

        return pycore
    return ccore


def c_core_available() -> bool:
    """True if the C extension is built and importable here."""
    try:
        from pyprobes import _speedups  # noqa: F401
    except ImportError:
        return False
    return True
