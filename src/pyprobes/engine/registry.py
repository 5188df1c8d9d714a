"""The registry: register, unregister, enable, disable; pending and gone probes; the switch.

Everything here is cold and runs under one reentrant lock, ``_lock``: it serialises changes to
the registry's tables and the core's published sites. It is never held while importing, while
calling a handler, or by the hot path, which reads only what the core published. The import
watcher calls in with the module's import lock held; nothing under ``_lock`` waits for an
import lock, so the two cannot deadlock.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import CodeType
from typing import Any

from pyprobes.engine import blacklist, core, quirks, shared, tool
from pyprobes.engine.errors import (
    AlreadyRegisteredError,
    InvalidProbeError,
    ProbeError,
    SymbolNotFoundError,
)
from pyprobes.engine.imports import ImportWatcher, real_path
from pyprobes.engine.probes import Jprobe, Kprobe, Kretprobe, Probe
from pyprobes.engine.program import KeyOf, Program, ProgramRunner
from pyprobes.engine.resolve import (
    ENTRY,
    Location,
    file_roots,
    find_code_by_qualname,
    locate_in_code,
    locate_line,
    missing_module_error,
    module_exists,
    module_name_of,
    module_roots,
    resolve_in_module,
    split_symbol,
    unwrap,
)

_log = logging.getLogger("pyprobes")
# The dispatch core, chosen once for the process: C (ccore) or pure Python (pycore); see
# pyprobes.engine.core. PYPROBES_CORE=python|c forces one.
_core: core.Core = core.select()

_lock = threading.RLock()


def _reinit_lock_in_child() -> None:
    # A fork while another thread held the lock would leave it held forever in the child.
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_reinit_lock_in_child)
_probes: dict[Probe, None] = {}  # registered probes, in registration order
_by_code: dict[int, list[Probe]] = {}  # armed probes per id(code)
_code_refs: dict[int, weakref.ref[CodeType]] = {}
_watch_modules: dict[str, list[Probe]] = {}  # symbol probes by module name (pending or armed)
_pending_paths: dict[str, list[Probe]] = {}  # filename probes waiting for their file
_import_listeners: list[ImportListener] = []  # called with each module's code before it runs
_dead: deque[int] = deque()  # ids of collected code objects, appended by weakref callbacks
_seq = itertools.count()
_enabled = True
_tool_id: int | None = None


ImportListener = Callable[[str, str | None, CodeType], None]


@dataclass(frozen=True, slots=True)
class _Pending:
    module: str | None = None
    path: str | None = None


def default_maxactive() -> int:
    """The kernel's default pool size for ``maxactive <= 0``: max(10, 2 * CPUs)."""
    return max(10, 2 * (os.cpu_count() or 1))


# --- validation and resolution --------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(p: Probe) -> None:
    given = [
        n
        for n, v in (("addr", p._addr), ("symbol_name", p.symbol_name), ("filename", p.filename))
        if v is not None
    ]
    if len(given) != 1:
        got = " and ".join(given) if given else "none of them"
        raise InvalidProbeError(f"give exactly one of addr, symbol_name or filename (got {got})")
    if p._addr_is_weak and p.addr is None:
        raise SymbolNotFoundError("the probed object (addr) no longer exists")
    if not _is_int(p.offset) or p.offset < 0:
        raise InvalidProbeError(f"offset must be an int >= 0, not {p.offset!r}")
    if p.line is not None and (not _is_int(p.line) or p.line < 1):
        raise InvalidProbeError(f"line must be a positive int or None, not {p.line!r}")
    if p.offset and p.line is not None:
        raise InvalidProbeError("give an offset or a line, not both")
    if p.filename is not None:
        if not isinstance(p.filename, str):
            raise InvalidProbeError(f"filename must be a str, not {p.filename!r}")
        if p.line is None:
            raise InvalidProbeError("a probe by filename needs line= (an absolute source line)")
    if p.symbol_name is not None:
        _, qual = split_symbol(p.symbol_name)
        if qual is None and p.line is None:
            raise InvalidProbeError(
                f"symbol_name {p.symbol_name!r} names a module: give 'pkg.mod:Qual.name',"
                " or line= for a line of that module"
            )
    handlers: list[tuple[str, object]] = [("fault_handler", p.fault_handler)]
    if isinstance(p, Kprobe):
        handlers += [("pre_handler", p.pre_handler), ("post_handler", p.post_handler)]
    elif isinstance(p, Kretprobe):
        handlers += [("handler", p.handler), ("entry_handler", p.entry_handler)]
        if not _is_int(p.maxactive):
            raise InvalidProbeError(f"maxactive must be an int, not {p.maxactive!r}")
    elif isinstance(p, Jprobe) and not callable(p.entry):
        raise InvalidProbeError(f"jprobe entry must be callable, not {p.entry!r}")
    for name, h in handlers:
        if h is not None and not callable(h):
            raise InvalidProbeError(f"{name} must be callable or None, not {h!r}")


def _resolve(p: Probe) -> Location | _Pending:
    addr = p.addr
    if addr is not None:
        code, wrapped = unwrap(addr)
        return locate_in_code(code, p.offset, p.line, module_name_of(code), wrapped)
    if p.symbol_name is not None:
        modname, qual = split_symbol(p.symbol_name)
        module = sys.modules.get(modname)
        if module is None:
            if not module_exists(modname):
                raise missing_module_error(modname)
            return _Pending(module=modname)
        if qual is None:
            assert p.line is not None
            return locate_line(module_roots(module), p.line, f"module {modname}", modname)
        code, wrapped = resolve_in_module(module, qual)
        return locate_in_code(code, p.offset, p.line, modname, wrapped)
    assert p.filename is not None and p.line is not None
    path = real_path(p.filename)
    if not os.path.isfile(path):
        raise SymbolNotFoundError(f"no such source file: {p.filename!r}")
    roots = file_roots(path)
    if not roots:
        return _Pending(path=path)
    return locate_line(roots, p.line, p.filename, module_name_of(roots[0]))


def _check_location(p: Probe, loc: Location) -> None:
    code = loc.code
    assert code is not None
    blacklist.check(code)
    if isinstance(p, Kretprobe | Jprobe) and loc.where != ENTRY:
        what = "kretprobe" if isinstance(p, Kretprobe) else "jprobe"
        raise InvalidProbeError(
            f"a {what} goes at function entry only; {loc.symbol} at"
            f" {'line ' + str(loc.line) if loc.line else 'offset ' + str(loc.offset)} is not"
            " the entry (use offset 0 and no line)"
        )
    if isinstance(p, Jprobe):
        _check_jprobe_signature(p, code)


def _check_jprobe_signature(p: Jprobe, code: CodeType) -> None:
    try:
        sig = inspect.signature(p.entry)
    except (TypeError, ValueError):
        return  # not introspectable (a C callable): it will fault at run time if it must
    args = {name: None for name in code.co_varnames}
    pos, kw = shared.call_args(code, args | _empty_star_args(code))
    try:
        sig.bind(*pos, **kw)
    except TypeError as exc:
        raise InvalidProbeError(
            f"jprobe entry {getattr(p.entry, '__qualname__', p.entry)!r} must accept the"
            f" arguments of {code.co_qualname}{_signature_of(code)}: {exc}"
        ) from None


def _empty_star_args(code: CodeType) -> dict[str, object]:
    from pyprobes.engine.context import CO_VARARGS, CO_VARKEYWORDS

    names = code.co_varnames
    i = code.co_argcount + code.co_kwonlyargcount
    out: dict[str, object] = {}
    if code.co_flags & CO_VARARGS:
        out[names[i]] = ()
        i += 1
    if code.co_flags & CO_VARKEYWORDS:
        out[names[i]] = {}
    return out


def _signature_of(code: CodeType) -> str:
    from pyprobes.engine.context import parameter_names

    return f"({', '.join(parameter_names(code))})"


# --- arming -----------------------------------------------------------------------------------


def _on_code_collected(cid: int, _ref: object) -> None:
    # Runs inside the garbage collector, anywhere: only note the id, under no lock.
    _dead.append(cid)


def _arm(p: Probe, loc: Location) -> int:
    code = loc.code
    assert code is not None
    cid = id(code)
    p._location = loc
    p._gone = False
    _by_code.setdefault(cid, []).append(p)
    if cid not in _code_refs:
        _code_refs[cid] = weakref.ref(code, functools.partial(_on_code_collected, cid))
    return cid


def _disarm(p: Probe) -> int | None:
    """Take a probe off its code; return that code's id (to be refreshed)."""
    loc = p._location
    p._location = None
    if loc is None:
        return None
    code = loc.code
    cid = id(code) if code is not None else None
    if cid is not None:
        probes = _by_code.get(cid)
        if probes is not None and p in probes:
            probes.remove(p)
    if isinstance(p, Kretprobe):
        _core.drop_ret_state(p._rstate)
        p._rstate = None
    return cid


def _refresh(cids: Iterable[int | None]) -> None:
    """Publish the enabled probes of these code objects to the core, then commit."""
    for cid in set(cids):
        if cid is None:
            continue
        ref = _code_refs.get(cid)
        code = ref() if ref is not None else None
        if code is None:
            continue
        probes = sorted(_by_code.get(cid, ()), key=lambda q: q._seq)
        items: list[tuple[Probe, Location]] = []
        for q in probes:
            live = _enabled and not q._disabled
            if isinstance(q, Kretprobe):
                if live and q._rstate is None:
                    q._rstate = _core.new_ret_state(q, q.maxactive)
                elif not live and q._rstate is not None:
                    _core.drop_ret_state(q._rstate)
                    q._rstate = None
            if live and q._location is not None:
                items.append((q, q._location))
        _core.publish(code, items)
        if not probes:
            _by_code.pop(cid, None)
            _code_refs.pop(cid, None)
    _core.commit()


def process_dead_code() -> None:
    """Mark the probes of collected code objects GONE and forget those code objects."""
    if not _dead:
        return
    with _lock:
        while _dead:
            cid = _dead.popleft()
            _code_refs.pop(cid, None)
            _core.forget(cid)
            for p in _by_code.pop(cid, ()):
                if isinstance(p, Kretprobe):
                    _core.drop_ret_state(p._rstate)
                    p._rstate = None
                p._location = None
                p._gone = True
        _core.commit()


def _update_watcher() -> None:
    _watcher.update(
        {m for m, ps in _watch_modules.items() if ps},
        {path for path, ps in _pending_paths.items() if ps},
        every=bool(_import_listeners),
    )


def add_import_listener(listener: ImportListener) -> None:
    """Call ``listener(module_name, origin, code)`` for every module imported from now on,
    with its code object just before it runs (front ends use it for wildcard targets).
    The listener runs with the module's import lock held; its exceptions are logged."""
    with _lock:
        if listener not in _import_listeners:
            _import_listeners.append(listener)
        _update_watcher()


def remove_import_listener(listener: ImportListener) -> None:
    """Stop calling ``listener``; a no-op if it is not registered."""
    with _lock:
        if listener in _import_listeners:
            _import_listeners.remove(listener)
        _update_watcher()


def _ensure_tool() -> None:
    global _tool_id
    if _tool_id is None:
        tid = tool.acquire()
        try:
            quirks.measure(tid)
            _core.install(tid)
        except BaseException:
            tool.release(tid)
            raise
        _tool_id = tid


def _release_tool_if_idle() -> None:
    global _tool_id
    if _probes or _tool_id is None:
        return
    for cid in list(_by_code):
        ref = _code_refs.get(cid)
        code = ref() if ref is not None else None
        if code is not None:
            _core.publish(code, [])
    _by_code.clear()
    _code_refs.clear()
    _core.commit()
    _core.uninstall()
    tool.release(_tool_id)
    _tool_id = None


# --- import-time arming -------------------------------------------------------------------


def _locate_on_code(p: Probe, name: str, code: CodeType) -> Location | None:
    """Where a symbol probe goes in module ``name`` whose code is ``code`` (None: the module
    does not define its function); raises ProbeError where it cannot go."""
    assert p.symbol_name is not None
    _, qual = split_symbol(p.symbol_name)
    if qual is None:
        assert p.line is not None
        loc = locate_line([code], p.line, f"module {name}", name)
    else:
        found = find_code_by_qualname([code], qual)
        if found is None:
            return None
        loc = locate_in_code(found, p.offset, p.line, name, False)
    _check_location(p, loc)
    return loc


def resolve_probe(p: Probe) -> Location | None:
    """Resolve ``p`` as registering it would, registering nothing: where it would arm, or None
    while it would be pending; raises the ProbeError that registering would."""
    with _lock:
        _validate(p)
        target = _resolve(p)
    if isinstance(target, Location):
        _check_location(p, target)
        return target
    return None


def resolve_probe_on_code(p: Probe, name: str, code: CodeType) -> Location:
    """Resolve a symbol probe on the code of module ``name`` as importing it would arm it
    (``code`` compiled, not run), registering nothing; raises where it could not arm."""
    _validate(p)
    loc = _locate_on_code(p, name, code)
    if loc is None:
        _, qual = split_symbol(p.symbol_name or "")
        raise SymbolNotFoundError(f"module {name!r} defines no function {qual!r}")
    return loc


def _on_module_code(name: str, origin: str | None, code: CodeType) -> None:
    """A watched module's code object is about to run: (re)arm the probes that name it."""
    for listener in list(_import_listeners):
        try:
            listener(name, origin, code)
        except Exception:
            _log.exception("pyprobes: import listener %r failed on %s", listener, name)
    with _lock:
        _process_dead_locked()
        touched: list[int | None] = []
        for p in list(_watch_modules.get(name, ())):
            try:
                loc = _locate_on_code(p, name, code)
            except ProbeError as exc:
                _log.warning("pyprobes: cannot arm %r on %s: %s", p, name, exc)
                continue
            if loc is None:
                _log.warning(
                    "pyprobes: %s does not define %s; probe %r stays pending",
                    name,
                    split_symbol(p.symbol_name or "")[1],
                    p,
                )
                continue
            touched.append(_disarm(p))
            touched.append(_arm(p, loc))
        if origin is not None:
            for p in _pending_paths.pop(real_path(origin), []):
                assert p.line is not None
                try:
                    loc = locate_line([code], p.line, origin, name)
                    _check_location(p, loc)
                except ProbeError as exc:
                    _log.warning("pyprobes: cannot arm %r on %s: %s", p, origin, exc)
                    _pending_paths.setdefault(real_path(origin), []).append(p)
                    continue
                touched.append(_arm(p, loc))
        _refresh(touched)
        _update_watcher()


def announce_code(code: CodeType, module: str = "__main__") -> None:
    """Tell the engine that ``code`` is about to run as ``module`` (for front ends that exec
    code themselves, as ``runpy`` does): pending probes on that module or file arm on it."""
    _on_module_code(module, code.co_filename, code)


_watcher = ImportWatcher(_on_module_code)


def _process_dead_locked() -> None:
    if _dead:
        process_dead_code()


# --- public operations --------------------------------------------------------------------


def _register(p: Probe, cls: type[Probe], what: str) -> None:
    if not isinstance(p, cls):
        raise InvalidProbeError(f"{what} takes a {cls.__name__}, not {type(p).__name__}")
    tool.check_supported()
    with _lock:
        _process_dead_locked()
        if p._registered:
            raise AlreadyRegisteredError(f"{p!r} is registered already")
        _validate(p)
        target = _resolve(p)
        if isinstance(target, Location):
            _check_location(p, target)
        _ensure_tool()
        # Nothing below raises for bad input: the probe is registered whole or not at all.
        p._counters = _core.new_counters()  # zeroed, and the kind the core increments
        p._fault_reported = False
        if isinstance(p, Kretprobe) and p.maxactive <= 0:
            p.maxactive = default_maxactive()
        p._seq = next(_seq)
        p._registered = True
        _probes[p] = None
        if p.symbol_name is not None:
            _watch_modules.setdefault(split_symbol(p.symbol_name)[0], []).append(p)
        if isinstance(target, Location):
            p._weaken_addr()
            cid = _arm(p, target)
            _refresh([cid])
        else:
            p._location = None
            if target.path is not None:
                _pending_paths.setdefault(target.path, []).append(p)
        _update_watcher()


def unregister(p: Probe) -> None:
    """Remove a probe of any kind; a no-op if it is not registered (or not a probe)."""
    _unregister(p)


def _unregister(p: Probe) -> None:
    with _lock:
        _process_dead_locked()
        if not isinstance(p, Probe) or not p._registered:
            return
        cid = _disarm(p)
        if p.symbol_name is not None:
            lst = _watch_modules.get(split_symbol(p.symbol_name)[0], [])
            if p in lst:
                lst.remove(p)
        for lst in _pending_paths.values():
            if p in lst:
                lst.remove(p)
        _probes.pop(p, None)
        p._registered = False
        _refresh([cid])
        _update_watcher()
        _release_tool_if_idle()


def _register_many(ps: Iterable[Probe], one: type[Probe], what: str) -> None:
    done: list[Probe] = []
    try:
        for p in ps:
            _register(p, one, what)
            done.append(p)
    except BaseException:
        for p in reversed(done):
            _unregister(p)
        raise


def _unregister_many(ps: Iterable[object]) -> None:
    for p in ps:
        try:
            if isinstance(p, Probe):
                _unregister(p)
        except Exception:
            _log.exception("pyprobes: unregistering %r failed; carrying on", p)


def register_kprobe(p: Kprobe) -> None:
    """Arm a kprobe (or make it pending until its module is imported)."""
    _register(p, Kprobe, "register_kprobe")


def unregister_kprobe(p: Kprobe) -> None:
    """Remove a kprobe; a no-op if it is not registered."""
    _unregister(p)


def register_kprobes(ps: Iterable[Kprobe]) -> None:
    """Register several; on the first failure the ones before it are unregistered."""
    _register_many(ps, Kprobe, "register_kprobes")


def unregister_kprobes(ps: Iterable[Kprobe]) -> None:
    """Unregister several, carrying on past bad entries."""
    _unregister_many(ps)


def register_jprobe(p: Jprobe) -> None:
    """Arm a jprobe at its function's entry."""
    _register(p, Jprobe, "register_jprobe")


def unregister_jprobe(p: Jprobe) -> None:
    """Remove a jprobe; a no-op if it is not registered."""
    _unregister(p)


def register_jprobes(ps: Iterable[Jprobe]) -> None:
    """Register several jprobes, all or none."""
    _register_many(ps, Jprobe, "register_jprobes")


def unregister_jprobes(ps: Iterable[Jprobe]) -> None:
    """Unregister several jprobes, carrying on past bad entries."""
    _unregister_many(ps)


def register_kretprobe(rp: Kretprobe) -> None:
    """Arm a return probe at its function's entry."""
    _register(rp, Kretprobe, "register_kretprobe")


def unregister_kretprobe(rp: Kretprobe) -> None:
    """Remove a return probe; activations in flight return normally without its handler."""
    _unregister(rp)


def register_kretprobes(rps: Iterable[Kretprobe]) -> None:
    """Register several return probes, all or none."""
    _register_many(rps, Kretprobe, "register_kretprobes")


def unregister_kretprobes(rps: Iterable[Kretprobe]) -> None:
    """Unregister several return probes, carrying on past bad entries."""
    _unregister_many(rps)


def disable_kprobe(p: Probe) -> None:
    """Disarm a probe of any kind, keeping its registration (a kretprobe's activations in
    flight end without handlers)."""
    if not isinstance(p, Probe):
        raise InvalidProbeError(f"disable_kprobe takes a probe, not {type(p).__name__}")
    with _lock:
        _process_dead_locked()
        if p._disabled:
            return
        p._disabled = True
        if p._location is not None:
            code = p._location.code
            _refresh([id(code) if code is not None else None])


def enable_kprobe(p: Probe) -> None:
    """Re-arm a disabled probe; a GONE probe cannot be enabled."""
    if not isinstance(p, Probe):
        raise InvalidProbeError(f"enable_kprobe takes a probe, not {type(p).__name__}")
    with _lock:
        _process_dead_locked()
        if p._registered and p._gone:
            raise InvalidProbeError(
                f"{p!r} is GONE: the code it probed was collected; register a new probe"
            )
        if not p._disabled:
            return
        p._disabled = False
        if p._location is not None:
            code = p._location.code
            _refresh([id(code) if code is not None else None])


enable_jprobe = enable_kprobe
disable_jprobe = disable_kprobe
enable_kretprobe = enable_kprobe
disable_kretprobe = disable_kprobe


def set_enabled(flag: bool) -> None:
    """The global switch (debugfs kprobes/enabled): disarm or re-arm everything at once,
    leaving each probe's own disabled state as it is."""
    global _enabled
    with _lock:
        _process_dead_locked()
        flag = bool(flag)
        if flag == _enabled:
            return
        _enabled = flag
        _refresh(list(_by_code))


def is_enabled() -> bool:
    """The state of the global switch."""
    return _enabled


def registered_probes() -> list[Probe]:
    """Every registered probe, in registration order."""
    with _lock:
        _process_dead_locked()
        return list(_probes)


def count_active(rp: Kretprobe) -> int:
    """Instances of a kretprobe in use right now."""
    return _core.nactive(rp._rstate)


def program_handler(
    prog: Program, key_of: KeyOf | None = None, *, ring: object = None, probe: int = 0
) -> ProgramRunner:
    """A handler that runs ``prog`` in the selected core, with no Python call per hit there.

    Give it as a kprobe's ``pre_handler`` or a kretprobe's ``handler``; ``take()`` reads and
    resets what it gathered. ``key_of`` turns a key that is not a scalar into a str. With a
    ``ring`` (``record_ring()``), each hit that passes the filter also writes an event record
    of ``prog.fields`` there, told apart by ``probe`` (an id from ``ring.add_probe()``).
    """
    return _core.program_handler(prog, key_of, ring, probe)  # type: ignore[return-value]


def record_ring(
    capacity: int,
    render: Callable[[object], object],
    exception_text: Callable[[BaseException], object],
    wake: Callable[[], object] | None = None,
    link_key: str | None = None,
) -> Any:
    """A bounded ring of programs' event records in the selected core (``engine.ring``).

    ``render`` and ``exception_text`` turn a value that is not a plain scalar, and an
    exception, into what a record holds; ``wake`` is called when the ring is a quarter full.
    With ``link_key``, a return's record also keeps what its activation's ``ri.data`` holds
    under that key (None if nothing): the last element of the record.
    """
    return _core.record_ring(capacity, render, exception_text, wake, link_key)


# --- pyprobes' own threads ------------------------------------------------------------------

_own_threads: set[int] = set()
_own_lock = threading.Lock()


@contextlib.contextmanager
def own_thread() -> Iterator[None]:
    """Run the body on a thread whose hits are not the program's: no probe fires there and
    nothing is counted (the event writer calling json, the agent, timers). The thread is
    given back at the end, so a later thread that reuses its ident is probed again."""
    ident = threading.get_ident()
    with _own_lock:
        _own_threads.add(ident)
        _core.set_own_threads(_own_threads)
    try:
        yield
    finally:
        with _own_lock:
            _own_threads.discard(ident)
            _core.set_own_threads(_own_threads)


def _forget_own_threads_in_child() -> None:
    global _own_lock
    _own_lock = threading.Lock()  # the forking thread alone survives: none of ours runs
    _own_threads.clear()
    _core.set_own_threads(())


os.register_at_fork(after_in_child=_forget_own_threads_in_child)


def core_name() -> str:
    """Which dispatch core is in use: ``"python"`` or ``"c"``."""
    return _core.NAME


def use_core(name: str) -> str:
    """Run the hot path on core ``name`` (``"c"`` or ``"python"``) from now on; return the
    name of the core used before (tests run one process on both cores with it).

    Refused (ProbeError) while any probe is registered or pyprobes holds its tool id: a core's
    sites, pools and counters are its own, and a probe armed on one cannot move to the other.
    An ImportError as for ``PYPROBES_CORE``, for a name that is not a core or a C core that is
    not built. Takes the registry lock.
    """
    global _core
    with _lock:
        if _probes or _tool_id is not None:
            raise ProbeError(
                f"cannot switch to the {name!r} core while {len(_probes)} probe(s) are"
                f" registered on the {_core.NAME!r} core; unregister them first"
            )
        if not name.strip():
            raise ImportError("use_core() needs a core name: 'c' or 'python'")
        previous, _core = _core.NAME, core.select(name)
        return previous


def tool_id() -> int | None:
    """The sys.monitoring tool id pyprobes holds, if any."""
    return _tool_id
