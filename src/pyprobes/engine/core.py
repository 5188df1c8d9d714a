"""Which dispatch core runs the hot path: ``ccore`` (C) or ``pycore`` (pure Python).

One core serves the whole process, chosen once, when the registry is imported:

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
    """The interface the registry drives (both core modules provide it)."""

    NAME: str

    def new_counters(self) -> ProbeCounters: ...
    def install(self, tool_id: int) -> None: ...
    def uninstall(self) -> None: ...
    def publish(self, code: CodeType, items: Sequence[tuple[Probe, Location]]) -> None: ...
    def commit(self) -> None: ...
    def forget(self, cid: int) -> None: ...
    def new_ret_state(self, rp: Kretprobe, maxactive: int) -> Any: ...
    def drop_ret_state(self, state: Any) -> None: ...
    def nactive(self, state: Any) -> int: ...
    def program_handler(
        self, prog: Program, key_of: KeyOf | None = None, ring: object = None, probe: int = 0
    ) -> object: ...
    def record_ring(
        self,
        capacity: int,
        render: Callable[[object], object],
        exception_text: Callable[[BaseException], object],
        wake: Callable[[], object] | None = None,
    ) -> Any: ...
    def set_own_threads(self, idents: Iterable[int]) -> None: ...


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
