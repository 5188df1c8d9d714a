"""Registration: symbols, jprobes, several probes at a place, batches, switches, pending, gone."""

from __future__ import annotations

import functools
import gc
import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pyprobes
from pyprobes import (
    AlreadyRegisteredError,
    InvalidProbeError,
    Jprobe,
    Kprobe,
    Kretprobe,
    ProbeBlacklistedError,
    SymbolNotFoundError,
)
from pyprobes.engine import registry

MODULE_SRC = """
import functools

def deco(f):
    @functools.wraps(f)
    def wrapper(*a, **k):
        return f(*a, **k)
    return wrapper

def bare_deco(f):
    def wrapper(*a, **k):
        return f(*a, **k)
    return wrapper

def plain(x):
    return x + 1

@deco
def decorated(x):
    return x * 2

@bare_deco
def bare(x):
    return x * 3

def outer(n):
    def inner(m):
        return m + n
    return inner(1)

class Shop:
    def __init__(self):
        self._price = 5

    def method(self, x):
        return x

    @staticmethod
    def static(x):
        return x

    @classmethod
    def klass(cls, x):
        return x

    @property
    def price(self):
        return self._price

    @price.setter
    def price(self, v):
        self._price = v

class Sub(Shop):
    pass

counter = 0
for _i in range(2):
    counter += 1   # MODULE-LOOP
"""


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """Write a module file with a fresh name; returns the name (not imported)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def make(src: str = MODULE_SRC, name: str | None = None) -> str:
        name = name or f"pp_target_{len(names)}_{id(tmp_path) % 100000}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(src))
        names.append(name)
        importlib.invalidate_caches()
        return name

    yield make
    for n in names:
        sys.modules.pop(n, None)


def hits_of(*probes: Any) -> list[int]:
    return [p.nhit for p in probes]


# --- symbol resolution ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qual", "call"),
    [
        ("plain", lambda m: m.plain(1)),
        ("Shop.method", lambda m: m.Shop().method(1)),
        ("Shop.static", lambda m: m.Shop.static(1)),
        ("Shop.klass", lambda m: m.Shop.klass(1)),
        ("Shop.price", lambda m: m.Shop().price),
        ("Sub.method", lambda m: m.Sub().method(1)),
        ("outer.<locals>.inner", lambda m: m.outer(2)),
        ("decorated", lambda m: m.decorated(1)),
        ("bare", lambda m: m.bare(1)),
    ],
)
def test_symbol_kinds(make_module: Callable[..., str], qual: str, call: Any) -> None:
    name = make_module()
    mod = importlib.import_module(name)
    seen: list[str] = []
    p = Kprobe(
        symbol_name=f"{name}:{qual}", pre_handler=lambda p, ctx: seen.append(ctx.code.co_qualname)
    )
    pyprobes.register_kprobe(p)
    try:
        call(mod)
    finally:
        pyprobes.unregister_kprobe(p)
    expected = qual.replace("Sub.", "Shop.")
    assert seen == [expected]


def test_decorated_function_is_listed_as_wrapped(make_module: Callable[..., str]) -> None:
    name = make_module()
    importlib.import_module(name)
    p = Kprobe(symbol_name=f"{name}:decorated")
    pyprobes.register_kprobe(p)
    try:
        (rec,) = pyprobes.list_probes()
        assert "WRAPPED" in rec.flags
    finally:
        pyprobes.unregister_kprobe(p)


def test_property_setter_is_not_the_getter(make_module: Callable[..., str]) -> None:
    name = make_module()
    mod = importlib.import_module(name)
    p = Kprobe(symbol_name=f"{name}:Shop.price")
    pyprobes.register_kprobe(p)
    try:
        shop = mod.Shop()
        shop.price = 3
        assert p.nhit == 0
        assert shop.price == 3
        assert p.nhit == 1
    finally:
        pyprobes.unregister_kprobe(p)


def test_module_line_probe(make_module: Callable[..., str]) -> None:
    name = make_module()
    mod = importlib.import_module(name)
    line = MODULE_SRC.splitlines().index("    return x + 1") + 1
    p = Kprobe(symbol_name=name, line=line)
    pyprobes.register_kprobe(p)
    try:
        mod.plain(1)
        assert p.nhit == 1
    finally:
        pyprobes.unregister_kprobe(p)


# --- jprobes ----------------------------------------------------------------------------


def target(a: int, b: int = 2, *args: int, key: str = "k", **kw: int) -> tuple[Any, ...]:
    return (a, b, args, key, kw)


def test_jprobe_mirrors_the_call_with_defaults() -> None:
    calls: list[tuple[Any, ...]] = []

    def mirror(a: int, b: int = 99, *args: int, key: str = "zz", **kw: int) -> str:
        calls.append((a, b, args, key, kw))
        a = 1000  # rebinding here cannot change the caller's locals
        return "ignored"

    j = Jprobe(mirror, addr=target)
    pyprobes.register_jprobe(j)
    try:
        assert target(1) == (1, 2, (), "k", {})
        assert target(1, 3, 4, 5, key="x", extra=6) == (1, 3, (4, 5), "x", {"extra": 6})
    finally:
        pyprobes.unregister_jprobe(j)
    assert calls == [(1, 2, (), "k", {}), (1, 3, (4, 5), "x", {"extra": 6})]
    assert j.nhit == 2


def test_jprobe_with_incompatible_signature_is_rejected() -> None:
    with pytest.raises(InvalidProbeError, match="must accept the arguments of target"):
        pyprobes.register_jprobe(Jprobe(lambda a: None, addr=target))
    assert pyprobes.registered_probes() == []


def test_jprobe_only_at_entry() -> None:
    j = Jprobe(lambda *a, **k: None, symbol_name="json:loads")
    j.offset = 2
    with pytest.raises(InvalidProbeError):
        pyprobes.register_jprobe(j)


# --- several probes at one place, batches -------------------------------------------------


def test_all_kinds_fire_in_registration_order_and_disable_leaves_others() -> None:
    order: list[str] = []
    k1 = Kprobe(addr=target, pre_handler=lambda p, ctx: order.append("k1"))
    r = Kretprobe(
        addr=target,
        entry_handler=lambda ri, ctx: order.append("r-entry"),
        handler=lambda ri, ctx: order.append("r-ret"),
    )
    j = Jprobe(lambda *a, **k: order.append("j"), addr=target)
    k2 = Kprobe(addr=target, pre_handler=lambda p, ctx: order.append("k2"))
    pyprobes.register_kprobe(k1)
    pyprobes.register_kretprobe(r)
    pyprobes.register_jprobe(j)
    pyprobes.register_kprobe(k2)
    try:
        target(1)
        assert order == ["k1", "r-entry", "j", "k2", "r-ret"]
        order.clear()
        pyprobes.disable_kprobe(j)
        target(1)
        assert order == ["k1", "r-entry", "k2", "r-ret"]
        order.clear()
        pyprobes.enable_kprobe(j)
        target(1)
        assert order == ["k1", "r-entry", "j", "k2", "r-ret"]
    finally:
        pyprobes.unregister_kprobes([k1, k2])
        pyprobes.unregister_jprobe(j)
        pyprobes.unregister_kretprobe(r)


def test_batch_registration_rolls_back_on_first_failure() -> None:
    good1 = Kprobe(addr=target)
    good2 = Kprobe(addr=target, offset=0)
    bad = Kprobe(symbol_name="json:no_such_function")
    never = Kprobe(addr=target)
    with pytest.raises(SymbolNotFoundError):
        pyprobes.register_kprobes([good1, good2, bad, never])
    assert pyprobes.registered_probes() == []
    assert not good1.registered and not good2.registered and not never.registered
    target(1)
    assert hits_of(good1, good2, never) == [0, 0, 0]


def test_batch_unregistration_carries_on_and_unregistering_twice_is_a_noop() -> None:
    a, b = Kprobe(addr=target), Kprobe(addr=target)
    pyprobes.register_kprobes([a, b])
    pyprobes.unregister_kprobes([a, "not a probe", Kprobe(addr=target), b])  # type: ignore[list-item]
    assert pyprobes.registered_probes() == []
    pyprobes.unregister_kprobe(a)
    pyprobes.unregister_kprobe(a)


def test_register_twice_raises() -> None:
    p = Kprobe(addr=target)
    pyprobes.register_kprobe(p)
    try:
        with pytest.raises(AlreadyRegisteredError):
            pyprobes.register_kprobe(p)
    finally:
        pyprobes.unregister_kprobe(p)


# --- disabled, global switch ---------------------------------------------------------------


def test_registered_disabled_then_enabled() -> None:
    p = Kprobe(addr=target, disabled=True)
    pyprobes.register_kprobe(p)
    try:
        target(1)
        assert p.nhit == 0 and p.disabled
        assert "DISABLED" in pyprobes.list_probes()[0].flags
        p.disabled = False
        target(1)
        assert p.nhit == 1
    finally:
        pyprobes.unregister_kprobe(p)


def test_global_switch_restores_each_probes_own_state() -> None:
    on = Kprobe(addr=target)
    off = Kprobe(addr=target, disabled=True)
    r = Kretprobe(addr=target)
    pyprobes.register_kprobes([on, off])
    pyprobes.register_kretprobe(r)
    try:
        pyprobes.set_enabled(False)
        assert not pyprobes.is_enabled()
        target(1)
        assert hits_of(on, off, r) == [0, 0, 0]
        assert [p.disabled for p in (on, off, r)] == [False, True, False]
        pyprobes.set_enabled(True)
        target(1)
        assert hits_of(on, off, r) == [1, 0, 1]
    finally:
        pyprobes.set_enabled(True)
        pyprobes.unregister_kprobes([on, off])
        pyprobes.unregister_kretprobe(r)


# --- pending, gone, reload -------------------------------------------------------------------


def test_pending_probe_arms_at_import_without_importing(make_module: Callable[..., str]) -> None:
    name = make_module()
    line = MODULE_SRC.splitlines().index("    counter += 1   # MODULE-LOOP") + 1
    p = Kprobe(symbol_name=f"{name}:Shop.method")
    loop_probe = Kprobe(symbol_name=name, line=line)
    pyprobes.register_kprobes([p, loop_probe])
    try:
        assert name not in sys.modules  # registration imported nothing
        assert p.pending and loop_probe.pending
        assert [r.flags for r in pyprobes.list_probes()] == [("PENDING",), ("PENDING",)]
        mod = importlib.import_module(name)
        assert not p.pending
        assert loop_probe.nhit == 2  # module-level code probed as it ran, first time
        mod.Shop().method(1)
        assert p.nhit == 1
    finally:
        pyprobes.unregister_kprobes([p, loop_probe])


def test_unknown_module_is_an_error_not_pending() -> None:
    with pytest.raises(SymbolNotFoundError, match=r"no module named 'jsonn'.*did you mean 'json'"):
        pyprobes.register_kprobe(Kprobe(symbol_name="jsonn:loads"))


def test_reload_rearms_symbol_probe_on_new_code(make_module: Callable[..., str]) -> None:
    name = make_module()
    mod = importlib.import_module(name)
    p = Kprobe(symbol_name=f"{name}:plain")
    pyprobes.register_kprobe(p)
    try:
        old_code = mod.plain.__code__
        mod = importlib.reload(mod)
        assert mod.plain.__code__ is not old_code
        assert p.code is mod.plain.__code__
        mod.plain(1)
        assert p.nhit == 1
    finally:
        pyprobes.unregister_kprobe(p)


def test_probe_is_gone_when_its_code_is_collected() -> None:
    ns: dict[str, Any] = {}
    exec(compile("def temp(x):\n    return x\n", "<temp>", "exec"), ns)
    p = Kprobe(addr=ns["temp"])
    pyprobes.register_kprobe(p)
    try:
        ns["temp"](1)
        assert p.nhit == 1
        ns.clear()
        gc.collect()
        assert p.gone
        assert p.addr is None
        assert "GONE" in pyprobes.list_probes()[0].flags
        with pytest.raises(InvalidProbeError, match="GONE"):
            pyprobes.enable_kprobe(p)
    finally:
        pyprobes.unregister_kprobe(p)


def test_gone_probe_can_be_disabled_then_enabling_raises() -> None:
    ns: dict[str, Any] = {}
    exec("def temp2(x):\n    return x\n", ns)
    p = Kprobe(addr=ns["temp2"])
    pyprobes.register_kprobe(p)
    try:
        ns.clear()
        gc.collect()
        pyprobes.disable_kprobe(p)
        with pytest.raises(InvalidProbeError):
            pyprobes.enable_kprobe(p)
    finally:
        pyprobes.unregister_kprobe(p)


# --- blacklist ------------------------------------------------------------------------------


def test_pyprobes_itself_cannot_be_probed() -> None:
    with pytest.raises(ProbeBlacklistedError, match="part of pyprobes"):
        pyprobes.register_kprobe(Kprobe(addr=pyprobes.register_kprobe))
    with pytest.raises(ProbeBlacklistedError):
        pyprobes.register_kprobe(Kprobe(symbol_name="pyprobes.engine.registry:set_enabled"))
    assert pyprobes.registered_probes() == []


def test_noprobe_functions_cannot_be_probed() -> None:
    @pyprobes.noprobe
    def secret(x: int) -> int:
        return x

    with pytest.raises(ProbeBlacklistedError, match="@noprobe"):
        pyprobes.register_kprobe(Kprobe(addr=secret))
    with pytest.raises(ProbeBlacklistedError):
        pyprobes.register_kretprobe(Kretprobe(addr=secret))
    assert pyprobes.registered_probes() == []


# --- bad input ---------------------------------------------------------------------------------


def lines_fn(x: int) -> int:
    y = x + 1

    return y


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (Kprobe, InvalidProbeError, "exactly one of addr, symbol_name or filename"),
        (
            lambda: Kprobe(addr=target, symbol_name="json:loads"),
            InvalidProbeError,
            "got addr and symbol_name",
        ),
        (lambda: Kprobe(addr=len), InvalidProbeError, "not a Python function"),
        (lambda: Kprobe(addr=dict), InvalidProbeError, "probe one of its methods"),
        (lambda: Kprobe(addr=target, offset=-1), InvalidProbeError, "offset must be"),
        (lambda: Kprobe(addr=target, offset="0"), InvalidProbeError, "offset must be"),
        (lambda: Kprobe(addr=target, offset=1), InvalidProbeError, "not an instruction boundary"),
        (lambda: Kprobe(addr=target, offset=2, line=3), InvalidProbeError, "not both"),
        (lambda: Kprobe(addr=target, pre_handler=3), InvalidProbeError, "pre_handler must be"),
        (lambda: Kprobe(symbol_name="json:lods"), SymbolNotFoundError, "did you mean 'loads'"),
        (lambda: Kprobe(symbol_name="json"), InvalidProbeError, "names a module"),
        (lambda: Kprobe(symbol_name="json:"), InvalidProbeError, "malformed"),
        (lambda: Kprobe(symbol_name=5), InvalidProbeError, "non-empty str"),
        (
            lambda: Kprobe(symbol_name="json.decoder:JSONDecoder.decodee"),
            SymbolNotFoundError,
            "did you mean 'decode'",
        ),
        (lambda: Kprobe(symbol_name="json:loads.x"), SymbolNotFoundError, "no attribute 'x'"),
        (lambda: Kprobe(filename="/no/such/file.py", line=3), SymbolNotFoundError, "no such"),
        (lambda: Kprobe(filename=__file__), InvalidProbeError, "needs line="),
        (lambda: Kretprobe(addr=target, maxactive="3"), InvalidProbeError, "maxactive"),
        ("blank-line", InvalidProbeError, "has no code to probe; lines with code near it"),
        ("resume", InvalidProbeError, "RESUME instruction"),
        ("kret-line", InvalidProbeError, "function entry only"),
        ("kprobe-as-jprobe", InvalidProbeError, "register_jprobe takes a Jprobe"),
    ],
)
def test_bad_input_gives_the_specific_error_and_registers_nothing(
    make: Any, error: type[Exception], message: str
) -> None:
    first = lines_fn.__code__.co_firstlineno
    if make == "blank-line":
        make = lambda: Kprobe(addr=lines_fn, line=first + 2)
    elif make == "resume":
        resume = next(i.offset for i in __import__("dis").get_instructions(outer_closure()))
        make = lambda: Kprobe(addr=outer_closure(), offset=resume or 2)
    elif make == "kret-line":
        make = lambda: Kretprobe(addr=lines_fn, line=first + 1)
    if make == "kprobe-as-jprobe":
        with pytest.raises(error, match=message):
            pyprobes.register_jprobe(Kprobe(addr=target))  # type: ignore[arg-type]
    else:
        probe = make()
        register = (
            pyprobes.register_kretprobe
            if isinstance(probe, Kretprobe)
            else pyprobes.register_kprobe
        )
        with pytest.raises(error, match=message):
            register(probe)
        assert not probe.registered
    assert pyprobes.registered_probes() == []
    assert pyprobes.tool_id() is None


def outer_closure() -> Any:
    n = 1

    def closure() -> int:
        return n

    return closure


def test_errors_share_one_base_and_match_builtins() -> None:
    assert issubclass(SymbolNotFoundError, LookupError)
    assert issubclass(InvalidProbeError, ValueError)
    for cls in (
        SymbolNotFoundError,
        InvalidProbeError,
        AlreadyRegisteredError,
        ProbeBlacklistedError,
        pyprobes.ToolIdInUseError,
        pyprobes.UnsupportedPythonError,
    ):
        assert issubclass(cls, pyprobes.ProbeError)


def test_listing_text() -> None:
    p = Kprobe(addr=target, offset=0)
    r = Kretprobe(addr=target, disabled=True)
    pyprobes.register_kprobe(p)
    pyprobes.register_kretprobe(r)
    try:
        target(1)
        text = pyprobes.format_probe_list(header=True).splitlines()
        assert text[0] == f"# pyprobes core={pyprobes.core_name()} probes enabled"
        assert text[1].split()[1:] == [
            "k",
            "test_registry:target+0",
            "[test_registry]",
            "hits=1",
            "misses=0",
        ]
        assert text[2].split()[1:] == [
            "r",
            "test_registry:target+0",
            "[test_registry]",
            "[DISABLED]",
            "hits=0",
            "misses=0",
        ]
        assert text[1].split()[0] == f"0x{id(target.__code__):x}"
        recs = pyprobes.list_probes()
        assert [(r.kind, r.offset, r.line, r.nhit) for r in recs] == [
            ("k", 0, None, 1),
            ("r", 0, None, 0),
        ]
    finally:
        pyprobes.unregister_kprobe(p)
        pyprobes.unregister_kretprobe(r)


def test_registry_not_importing_anything_for_pending(make_module: Callable[..., str]) -> None:
    name = make_module(name=None)
    before = set(sys.modules)
    p = Kprobe(symbol_name=f"{name}:plain")
    pyprobes.register_kprobe(p)
    try:
        assert set(sys.modules) - before <= {"pkgutil"}
    finally:
        pyprobes.unregister_kprobe(p)


_ = functools
_ = registry
