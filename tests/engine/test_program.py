"""Probe programs (engine/program.py): a filter, a key and a histogram run by the core per hit.

The suite runs once per core, so each test checks the core that runs; the differential test at
the end runs one workload under both cores in subprocesses and compares the results exactly.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import pyprobes
from pyprobes import Kprobe, Kretprobe
from pyprobes.engine.program import (
    FAULT_KEY,
    AllOf,
    AnyOf,
    Cmp,
    Not,
    Program,
    ProgramHandler,
    Results,
    Truth,
    Var,
)

DUR = Var("duration")
RET = Var("retval")


def n_local() -> Var:
    return Var("local", "n")


def work(n: object) -> object:
    return n


def fails(n: int) -> int:
    if n % 2:
        raise ValueError(n)
    return n


@contextmanager
def on_return(fn: object, prog: Program, **kw: object) -> Iterator[object]:
    h = pyprobes.program_handler(prog, **kw)  # type: ignore[arg-type]
    rp = Kretprobe(addr=fn, handler=h, maxactive=64)
    pyprobes.register_kretprobe(rp)
    try:
        yield h
    finally:
        pyprobes.unregister_kretprobe(rp)


@contextmanager
def on_entry(fn: object, prog: Program, **kw: object) -> Iterator[object]:
    h = pyprobes.program_handler(prog, **kw)  # type: ignore[arg-type]
    kp = Kprobe(addr=fn, pre_handler=h)
    pyprobes.register_kprobe(kp)
    try:
        yield h
    finally:
        pyprobes.unregister_kprobe(kp)


def take(h: object) -> Results:
    r = h.take()  # type: ignore[attr-defined]
    assert isinstance(r, Results)
    return r


def test_the_handler_is_the_cores_own() -> None:
    h = pyprobes.program_handler(Program())
    if pyprobes.core_name() == "c":
        assert type(h).__module__ == "pyprobes._speedups"
    else:
        assert isinstance(h, ProgramHandler)


def test_a_duration_histogram_counts_every_return_in_three_scales() -> None:
    prog = Program(hist=DUR, hist_scales=(1, 1000, 1_000_000))
    with on_return(work, prog) as h:
        for i in range(500):
            work(i)
    r = take(h)
    assert list(r.slots) == [None]
    slot = r.slots[None]
    assert slot.count == 500 and slot.skipped == 0
    assert [sum(b.values()) for b in slot.buckets] == [500, 500, 500]
    assert 0 < slot.max <= slot.total
    # bucket k of scale d holds values v with (v // d).bit_length() == k (1 also holds 0)
    ns_top = max(slot.buckets[0])
    assert (slot.max.bit_length() or 1) == ns_top
    assert take(h).slots == {}  # take() reset the store


def test_a_histogram_of_a_local_puts_each_value_in_its_log2_bucket() -> None:
    with on_return(work, Program(hist=n_local())) as h:
        for v in (0, 1, 2, 3, 4, 7, 8, 1000, 2**62, 2**63, -1, 2.9, math.inf, "x", True):
            work(v)
    slot = take(h).slots[None]
    assert slot.count == 15
    assert slot.buckets == ({1: 2, 2: 3, 3: 2, 4: 1, 10: 1, 63: 1},)
    assert slot.skipped == 5  # 2**63, -1, inf, "x", True (a bool is not a number here)
    assert slot.total == 0 + 1 + 2 + 3 + 4 + 7 + 8 + 1000 + 2**62 + 2
    assert slot.max == 2**62


def test_a_linear_histogram_of_a_local_puts_each_value_in_its_bucket() -> None:
    with on_return(work, Program(hist=n_local(), lhist=(0, 100, 10))) as h:
        values = (0, 9, 10, 55, 99, 100, 10**6, -1, -(2**63), 2**63 - 1, 2**63, -(2**63) - 1)
        for v in (*values, 9.99, -0.5, 100.0, -1e300, 1e300, math.inf, math.nan, "x", True):
            work(v)
    slot = take(h).slots[None]
    assert slot.count == 21
    # 0: below 0; k in 1..10: [10(k-1), 10k); 11: from 100 up. A float counts as its floor.
    assert slot.buckets == ({0: 3, 1: 3, 2: 1, 6: 1, 10: 1, 11: 4},)
    assert slot.skipped == 8  # beyond 64 bits (ints and floats), inf, nan, "x", True
    assert slot.total == 0 + 9 + 10 + 55 + 99 + 100 + 10**6 - 1 - 2**63 + 2**63 - 1 + 9 - 1 + 100


def test_a_linear_duration_histogram_with_a_negative_low_bound() -> None:
    prog = Program(hist=DUR, lhist=(-(10**7), 10**9, 10**7))
    with on_return(work, prog) as h:
        for i in range(50):
            work(i)
    slot = take(h).slots[None]
    assert slot.count == 50 and slot.skipped == 0
    assert sum(slot.buckets[0].values()) == 50
    assert 0 not in slot.buckets[0] and 1 not in slot.buckets[0]  # none is below 0 ns
    assert slot.total > 0


def test_a_filter_on_a_local_counts_what_it_drops() -> None:
    prog = Program(filter=Cmp(">", n_local(), 5))
    with on_return(work, prog) as h:
        for i in range(10):
            work(i)
        work("a")  # "a" > 5 is no comparison: false
        work([9])  # not a scalar: false
    r = take(h)
    assert r.slots[None].count == 4 and r.filtered == 8


def test_filters_combine_and_never_run_the_programs_code() -> None:
    ran: list[str] = []

    class Sneaky:
        def __eq__(self, other: object) -> bool:
            ran.append("eq")
            return True

        def __bool__(self) -> bool:
            ran.append("bool")
            return True

        __hash__ = object.__hash__

    n = n_local()
    prog = Program(
        filter=AnyOf(
            (
                AllOf((Cmp(">=", n, 3), Cmp("<", n, 5))),
                Cmp("in", n, ("x", 10)),
                Not(AnyOf((Cmp("!=", n, 99), Truth(n)))),
            )
        ),
        key=n,
    )
    with on_return(work, prog) as h:
        for v in (1, 3, 4, 5, 10, "x", "y", 99, Sneaky()):
            work(v)
    r = take(h)
    # an order that cannot be made ("x" >= 3, Sneaky() >= 3) is a fault: the whole filter is
    # false, though the `in` after it would hold for "x" (as spec.filter, where it raises)
    assert {k: s.count for k, s in r.slots.items()} == {3: 1, 4: 1, 10: 1}
    assert r.filtered == 6
    assert ran == []


def test_values_that_cannot_be_read_compare_as_the_fault_text_and_non_scalars_equal_nothing() -> (
    None
):
    def late(flag: bool, other: object) -> None:
        if flag:
            m = 1  # noqa: F841 (read by the program)

    m, other = Var("local", "m"), Var("local", "other")
    prog = Program(
        filter=AnyOf(
            (Cmp("==", m, FAULT_KEY), AllOf((Cmp("!=", other, 1), Cmp("not in", other, (1,)))))
        ),
        key=other,
    )
    with on_return(late, prog, key_of=repr) as h:
        late(False, 0)  # m unbound: "(fault)" == "(fault)"
        late(True, [1])  # a list: != 1 and not in (1,)
        late(True, 1)
    r = take(h)
    assert {k: s.count for k, s in r.slots.items()} == {0: 1, ("list", "[1]"): 1}
    assert r.filtered == 1


def test_keys_scalars_others_through_key_of_and_unbound_locals() -> None:
    def late(flag: bool) -> None:
        if flag:
            m = 1  # noqa: F841 (read by the program)

    with on_return(work, Program(key=n_local()), key_of=json.dumps) as h:
        for v in ("a", "a", 1, 1.0, None, True, [1, 2], float("nan"), float("nan")):
            work(v)
    slots = take(h).slots
    counts = {k: s.count for k, s in slots.items() if not (isinstance(k, float) and k != k)}
    # 1, 1.0 and True are one dict key, as in Python
    assert counts == {"a": 2, 1: 3, None: 1, ("list", "[1, 2]"): 1}
    assert [s.count for k, s in slots.items() if isinstance(k, float) and k != k] == [2]
    with on_return(late, Program(key=Var("local", "m"))) as h:
        late(True)
        late(False)
    assert {k: s.count for k, s in take(h).slots.items()} == {1: 1, FAULT_KEY: 1}


def test_a_key_of_that_fails_or_gives_no_str_is_a_fault_key() -> None:
    def bad(v: object) -> str:
        raise RuntimeError("no")

    with on_return(work, Program(key=n_local()), key_of=bad) as h:
        work([1])
    with on_return(work, Program(key=n_local()), key_of=lambda v: 3) as h2:  # type: ignore[arg-type, return-value]
        work([1])
    assert list(take(h).slots) == [FAULT_KEY]
    assert list(take(h2).slots) == [FAULT_KEY]


def test_new_keys_beyond_max_keys_are_counted_as_overflow() -> None:
    with on_return(work, Program(key=n_local(), max_keys=3)) as h:
        for i in range(10):
            work(i % 5)
    r = take(h)
    assert {k: s.count for k, s in r.slots.items()} == {0: 2, 1: 2, 2: 2}
    assert r.overflow == 4


def test_retval_and_exception_at_a_return() -> None:
    with on_return(fails, Program(key=Var("exception"), hist=RET)) as h:
        for i in range(6):
            try:
                fails(i)
            except ValueError:
                pass
    slots = take(h).slots
    # the exception itself: not a scalar, so its key is (type name, key_of(exception))
    assert slots[("ValueError", "")].count == 3
    assert slots[("ValueError", "")].skipped == 3  # no return value when it raised
    assert slots[None].count == 3 and slots[None].buckets == ({1: 1, 2: 1, 3: 1},)


def test_thread_names_as_keys() -> None:
    barrier = threading.Barrier(3)

    def body() -> None:
        barrier.wait()
        for _ in range(5):
            work(1)

    threads = [threading.Thread(target=body, name=f"w{i}") for i in range(3)]
    with on_return(work, Program(key=Var("thread"))) as h:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        work(2)
    counts = {k: s.count for k, s in take(h).slots.items()}
    assert counts == {"w0": 5, "w1": 5, "w2": 5, threading.current_thread().name: 1}


def test_thread_names_follow_renames_and_threads_threading_does_not_know() -> None:
    """A rename shows at the next hit; a thread started by _thread is Dummy-<native id> and no
    _DummyThread is made for it, until the program itself asks threading for it."""
    done = threading.Event()
    seen: list[int] = []

    def raw() -> None:
        try:
            seen.append(threading.get_native_id())
            work(3)
            assert threading.get_ident() not in threading._active  # we created nothing
            threading.current_thread()  # the program makes its _DummyThread
            work(4)
        finally:
            done.set()

    with on_return(work, Program(key=Var("thread"))) as h:
        work(1)
        me = threading.current_thread()
        old = me.name
        try:
            me.name = "renamed"
            work(2)
        finally:
            me.name = old
        _thread.start_new_thread(raw, ())
        done.wait()
    counts = {k: s.count for k, s in take(h).slots.items()}
    dummy = [k for k in counts if isinstance(k, str) and k.startswith("Dummy-")]
    assert counts.pop(old) == 1 and counts.pop("renamed") == 1
    assert counts.pop(f"Dummy-{seen[0]}") == 1
    assert len(dummy) == 2 and list(counts.values()) == [1]  # the _DummyThread's own name


def _kinds(a: int, b: int = 2, *rest: object, **kw: object) -> int:
    c = a + 1

    def inner() -> int:
        return a + c  # a and c are cells of _kinds, free variables of inner

    d = inner()
    del b
    return d


def _two_steps(x: int) -> Iterator[int]:
    y = x * 2
    yield y
    z = y + 1
    yield z


def _keys_of(fn: object, name: str, call: object, *, entry: bool = False) -> dict[object, int]:
    prog = Program(key=Var("local", name))
    with (on_entry if entry else on_return)(fn, prog) as h:
        call()  # type: ignore[operator]
    return {k: s.count for k, s in take(h).slots.items()}


def test_locals_of_every_kind_read_as_the_frame_has_them() -> None:
    """Plain locals are read from the frame's slots (C core: no frame object); cells,
    arguments that are cells, deleted and unbound locals, names the code does not have,
    and a generator's locals read as PyFrame_GetVar has them, in both cores."""
    call = lambda: _kinds(5, 7, 8, k=1)
    assert _keys_of(_kinds, "a", call) == {5: 1}  # an argument that is a cell
    assert _keys_of(_kinds, "c", call) == {6: 1}  # a cell
    assert _keys_of(_kinds, "d", call) == {11: 1}  # a plain local
    assert _keys_of(_kinds, "b", call) == {FAULT_KEY: 1}  # deleted
    assert _keys_of(_kinds, "nope", call) == {FAULT_KEY: 1}  # no such local
    assert len(_keys_of(_kinds, "rest", call)) == len(_keys_of(_kinds, "kw", call)) == 1
    assert _keys_of(_kinds, "a", call, entry=True) == {5: 1}
    assert _keys_of(_kinds, "d", call, entry=True) == {FAULT_KEY: 1}  # not bound yet
    two = lambda: list(_two_steps(3))
    assert _keys_of(_two_steps, "y", two) == {6: 1} and _keys_of(_two_steps, "z", two) == {7: 1}


_RAN: list[str] = []  # the program's code that a read ran: stays empty


class _Plain:
    kind = "class"

    def __init__(self) -> None:
        self.qty = 3


class _Slots:
    __slots__ = ("qty", "unset")

    def __init__(self) -> None:
        self.qty = 4


class _Prop:
    @property
    def qty(self) -> int:
        _RAN.append("a property")
        return 0


class _Hook:
    def __getattr__(self, name: str) -> object:
        _RAN.append("__getattr__")
        return 0


class _Intercept:
    qty = 1

    def __getattribute__(self, name: str) -> object:
        _RAN.append("__getattribute__")
        return 0


class _OwnDict(dict):  # type: ignore[type-arg]
    def __getitem__(self, key: object) -> object:
        _RAN.append("__getitem__")
        return 0

    get = __getitem__


class _Items(list):  # type: ignore[type-arg]
    pass


def _path_values() -> list[object]:
    shadow = _Plain()
    shadow.kind = "own"  # type: ignore[misc]
    odd = _Plain()
    odd.__dict__ = _OwnDict(qty=8)
    return [
        _Plain(), shadow, odd, _Slots(), _Prop(), _Hook(), _Intercept(), _Plain, 2 + 5j,
        ValueError("bad", 2), {"qty": 5, 0: "zero"}, [10, 20, 30], (1,), "text", b"by",
        _Items([1]), _OwnDict(qty=1), None, 7,
    ]  # fmt: skip


PATHS: list[tuple[tuple[str, object], ...]] = [
    (("attr", "qty"),),
    (("attr", "kind"),),
    (("attr", "unset"),),
    (("attr", "imag"),),
    (("attr", "args"), ("item", 0)),
    (("attr", "__class__"),),  # a dunder: refused
    (("attr", "mro"),),  # a method of a class
    (("item", "qty"),),
    (("item", 0),),
    (("item", -1),),
    (("item", 5),),
    (("item", True),),
    (("item", "x"),),
]


@pytest.mark.parametrize("path", PATHS, ids=str)
def test_paths_read_as_engine_reads_does(path: tuple[tuple[str, object], ...]) -> None:
    """A Var's path reads what engine.reads reads, and faults where it refuses or fails: the
    C core's own reads (plain attributes, slots, subscripts) and the rest alike."""
    from pyprobes.engine.reads import get_attr, get_item

    values = _path_values()
    expected: dict[object, int] = {}
    for v in values:
        try:
            for step, arg in path:
                v = get_attr(v, arg) if step == "attr" else get_item(v, arg)  # type: ignore[arg-type]
        except Exception:
            v = FAULT_KEY
        key = v if type(v) in (str, int, bool, float, type(None)) else (type(v).__name__, "")
        expected[key] = expected.get(key, 0) + 1
    prog = Program(key=Var("local", "n", path))
    with on_entry(work, prog) as h:
        for v in values:
            work(v)
    assert {k: s.count for k, s in take(h).slots.items()} == expected
    assert _RAN == []


class _Shown(threading.Thread):
    """A Thread whose _name is a property: what getattr gives is not its instance dict's."""

    @property  # type: ignore[override]
    def _name(self) -> str:
        return "shown"

    @_name.setter
    def _name(self, value: str) -> None:
        self.__dict__["_name"] = value


def test_thread_names_are_read_as_getattr_reads_them() -> None:
    """$thread is getattr(thread, "_name"): a class attribute in the way is not skipped."""
    with on_return(work, Program(key=Var("thread"))) as h:
        t = _Shown(target=lambda: [work(1), work(2)])
        t.start()
        t.join()
    assert {k: s.count for k, s in take(h).slots.items()} == {"shown": 2}


STATS_VALUES: list[object] = [
    5, 0, -3, 2**62, -(2**63), 7, True, "9", None, [1],  # 64-bit ints, and what is skipped
    2**100, -(2**200), 2**768 - 1, 2**768,  # wider ints: the sum becomes a Python int
    0.5, -0.0, 1e-300, 1e308, float("nan"), float("inf"),  # floats: the sum a float
    3, 1.25,
]  # fmt: skip


def test_stats_keep_what_output_stats_keeps() -> None:
    """count, sum (exact for ints, then float arithmetic in the order of the hits), min, max
    and the sketch's buckets, as output.Stats.add keeps them; the rest is skipped."""
    from pyprobes.output import Stats

    want = Stats()
    skipped = 0
    for v in STATS_VALUES:
        if (type(v) is int and v.bit_length() <= 768) or (type(v) is float and math.isfinite(v)):
            want.add(v)  # type: ignore[arg-type]
        else:
            skipped += 1
    prog = Program(stats=n_local(), key=Var("local", "n", (("attr", "real"),)))
    with on_entry(work, prog) as h:
        for v in STATS_VALUES:
            work(v)
    got = take(h).stats
    assert got is not None and got.skipped == skipped
    kept = Stats.from_parts(
        count=got.count, sum=got.sum, min=got.min, max=got.max, zeros=got.zeros,
        pos=got.pos, neg=got.neg,
    )  # fmt: skip
    assert kept == want and type(kept.sum) is type(want.sum) is float
    assert take(h).stats == type(got)()  # take() reset them
    with on_entry(work, Program(stats=n_local())) as h:
        for v in (1, 2**63 - 1, 2**63 - 1):
            work(v)
    got = take(h).stats
    assert got is not None and got.sum == 1 + 2 * (2**63 - 1) and got.min == 1  # no overflow


def test_an_entry_program_counts_and_reads_arguments() -> None:
    with on_entry(work, Program(filter=Cmp("==", n_local(), "hit"), key=n_local())) as h:
        for v in ("hit", "miss", "hit"):
            work(v)
    r = take(h)
    assert {k: s.count for k, s in r.slots.items()} == {"hit": 2} and r.filtered == 1
    with on_entry(work, Program(hist=DUR)) as h:
        work(1)
    slot = take(h).slots[None]
    assert slot.count == 1 and slot.skipped == 1  # an entry has no duration


def test_coroutine_activations_are_timed_across_awaits() -> None:
    async def step(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def main() -> None:
        await asyncio.gather(*(step(i) for i in range(50)))

    with on_return(step, Program(hist=RET)) as h:
        asyncio.run(main())
    slot = take(h).slots[None]
    assert slot.count == 50 and slot.total == sum(range(50))


def test_a_probe_with_a_program_keeps_counting_hits() -> None:
    h = pyprobes.program_handler(Program())
    rp = Kretprobe(addr=work, handler=h)
    pyprobes.register_kretprobe(rp)
    try:
        for i in range(7):
            work(i)
    finally:
        pyprobes.unregister_kretprobe(rp)
    assert rp.nhit == 7 and rp.nfault == 0
    assert take(h).slots[None].count == 7


def test_bad_programs_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="reads"):
        Var("bogus")
    with pytest.raises(ValueError, match="a local Var needs a name"):
        Var("local")
    with pytest.raises(ValueError, match="scalar constants"):
        Cmp("in", n_local(), 3)
    with pytest.raises(ValueError, match="scalar constants"):
        Cmp("==", n_local(), [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="comparison is one of"):
        Cmp("=~", n_local(), 1)
    with pytest.raises(ValueError, match="None only"):
        Cmp("is", n_local(), 1)
    with pytest.raises(ValueError, match="a step is"):
        Var("local", "n", (("attr", 1),))
    with pytest.raises(ValueError, match="a step is"):
        Var("local", "n", (("item", [1]),))
    with pytest.raises(ValueError, match="max_keys"):
        Program(max_keys=0)
    with pytest.raises(ValueError, match="hist_scales"):
        Program(hist_scales=(0,))
    for bad in ((0, 10, 3), (10, 0, 1), (0, 10, 0), (0, 1001, 1), (0, 1.0, 1), (0, 2**63, 1)):
        with pytest.raises(ValueError, match="lhist is"):
            Program(hist=n_local(), lhist=bad)  # type: ignore[arg-type]


DIFFERENTIAL = r"""
import json
import pyprobes
from pyprobes import Kretprobe
from pyprobes.engine.program import AllOf, Cmp, Not, Program, Var

def work(n, tag):
    return n

n, tag = Var("local", "n"), Var("local", "tag")
progs = [
    Program(hist=n, key=tag, hist_scales=(1, 10)),
    Program(filter=AllOf((Cmp(">", n, 10), Not(Cmp("in", tag, ("b",))))), key=Var("retval")),
    Program(key=tag, max_keys=2, hist=Var("retval")),
    Program(stats=n, filter=Cmp("is not", tag, None)),
    Program(hist=n, key=tag, lhist=(-100, 900, 50)),
    Program(hist=Var("retval"), lhist=(10, 500, 7), filter=Cmp("!=", tag, "c")),
]
handlers = [pyprobes.program_handler(p, key_of=repr) for p in progs]
probes = [Kretprobe(addr=work, handler=h) for h in handlers]
pyprobes.register_kretprobes(probes)
def body(k):
    for i in range(300):
        work((i * 7919 + k) % 1000 if i % 11 else [i], "abcd"[i % 4] if i % 13 else (i,))
for k in range(3):  # in order: which keys come first decides the overflow
    body(k)
pyprobes.unregister_kretprobes(probes)
out = []
for h in handlers:
    r = h.take()
    slots = sorted((repr(k), s.count, [sorted(b.items()) for b in s.buckets], s.total, s.max,
                    s.skipped) for k, s in r.slots.items())
    st = r.stats and [r.stats.count, r.stats.sum, r.stats.min, r.stats.max, r.stats.zeros,
                      sorted(r.stats.pos.items()), sorted(r.stats.neg.items()), r.stats.skipped]
    out.append([slots, r.filtered, r.overflow, st])
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not pyprobes.engine.core.c_core_available(), reason="the C core is not built here"
)
def test_both_cores_gather_the_same_results() -> None:
    runs = {}
    for core in ("python", "c"):
        env = dict(os.environ, PYPROBES_CORE=core)
        done = subprocess.run(
            [sys.executable, "-c", DIFFERENTIAL], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        runs[core] = json.loads(done.stdout)
    assert runs["python"] == runs["c"]
    assert runs["c"][2][2] > 0  # the overflow case did overflow
