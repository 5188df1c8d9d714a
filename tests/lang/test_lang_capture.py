"""Capture: reading fetch paths without running the program's code, and bounded rendering."""

from __future__ import annotations

import functools
import json
import math
import re
import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprobes.lang import (
    FAULT,
    Attr,
    CaptureFault,
    FetchArg,
    Index,
    Root,
    fetch,
    fetch_and_render,
    parse_spec,
    render,
)

CALLS: list[str] = []


class Recorder:
    """Every way of running code on it is recorded in CALLS."""

    shared = "class-level"

    def __init__(self) -> None:
        self.plain = {"k": [1, 2, ("a", "b")]}
        self.__dict__["prop"] = "shadowed"

    @property
    def prop(self) -> int:
        CALLS.append("property")
        return 1

    @functools.cached_property
    def cached(self) -> int:
        CALLS.append("cached_property")
        return 2

    def method(self) -> None:
        CALLS.append("method")

    def __getattr__(self, name: str) -> Any:
        CALLS.append(f"__getattr__({name})")
        return 3

    def __repr__(self) -> str:
        CALLS.append("__repr__")
        return "Recorder!"

    def __str__(self) -> str:
        CALLS.append("__str__")
        return "recorder"

    def __eq__(self, other: object) -> bool:
        CALLS.append("__eq__")
        return True

    def __hash__(self) -> int:
        CALLS.append("__hash__")
        return 0

    def __len__(self) -> int:
        CALLS.append("__len__")
        return 5

    def __getitem__(self, key: object) -> int:
        CALLS.append("__getitem__")
        return 4

    def __bool__(self) -> bool:
        CALLS.append("__bool__")
        return True


class Slotted:
    __slots__ = ("set_slot", "unset_slot")

    def __init__(self) -> None:
        self.set_slot = 7


class Proxy:
    def __init__(self) -> None:
        self.x = 1

    def __getattribute__(self, name: str) -> Any:
        CALLS.append("__getattribute__")
        return object.__getattribute__(self, name)


class Descr:
    def __get__(self, obj: object, owner: type | None = None) -> int:
        CALLS.append("Descr.__get__")
        return 9


class WithDescr:
    d = Descr()


class MyDict(dict[str, int]):
    def __getitem__(self, key: str) -> int:
        CALLS.append("MyDict.__getitem__")
        return 0


class Meta(type):
    @property
    def meta_prop(cls) -> int:
        CALLS.append("meta property")
        return 1


class WithMeta(metaclass=Meta):
    plain = 11


@pytest.fixture(autouse=True)
def no_calls() -> Any:
    CALLS.clear()
    yield
    CALLS.clear()


def arg(expr: str) -> FetchArg:
    return parse_spec(f"r m:f x={expr}").fetchargs[0]


def value_of(expr: str, **env: object) -> object:
    return fetch(arg(expr), env.__getitem__)


def test_instance_dict_and_paths() -> None:
    r = Recorder()
    assert value_of("o.plain['k'][2][1]", o=r) == "b"
    assert CALLS == []


def test_plain_class_attribute() -> None:
    assert value_of("o.shared", o=Recorder()) == "class-level"
    assert CALLS == []


def test_slots() -> None:
    assert value_of("o.set_slot", o=Slotted()) == 7
    with pytest.raises(CaptureFault):
        value_of("o.unset_slot", o=Slotted())


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("o.prop", "is a property"),
        ("o.cached", "is a descriptor"),
        ("o.method", "is a method"),
        ("o.missing", "no attribute 'missing' (its __getattr__ is not run)"),
    ],
)
def test_code_running_attributes_are_faults(expr: str, reason: str) -> None:
    with pytest.raises(CaptureFault, match=re.escape(reason)):
        value_of(expr, o=Recorder())
    assert CALLS == []
    assert fetch_and_render(arg(expr), {"o": Recorder()}.__getitem__) == FAULT
    assert CALLS == []


def test_cached_property_value_already_in_the_instance_dict_is_read() -> None:
    r = Recorder()
    r.__dict__["cached"] = 42
    assert value_of("o.cached", o=r) == 42
    assert CALLS == []


def test_custom_getattribute_is_refused() -> None:
    p = Proxy()
    CALLS.clear()
    with pytest.raises(CaptureFault, match="__getattribute__"):
        value_of("o.x", o=p)
    assert CALLS == []


def test_python_descriptor_is_refused() -> None:
    with pytest.raises(CaptureFault, match="descriptor"):
        value_of("o.d", o=WithDescr())
    assert CALLS == []


def test_class_objects() -> None:
    assert value_of("c.plain", c=WithMeta) == 11
    assert value_of("c.shared", c=Recorder) == "class-level"
    with pytest.raises(CaptureFault):
        value_of("c.meta_prop", c=WithMeta)
    with pytest.raises(CaptureFault):
        value_of("c.prop", c=Recorder)
    assert CALLS == []


def test_modules() -> None:
    assert value_of("m.dumps", m=json) is json.dumps
    with pytest.raises(CaptureFault):
        value_of("m.nope", m=json)


def test_builtin_getset_attributes() -> None:
    err = ValueError("boom", 3)
    assert value_of("e.args", e=err) == ("boom", 3)
    assert value_of("e.errno", e=OSError(2, "x")) == 2


def test_dunder_attribute_refused_even_when_built_by_hand() -> None:
    handmade = FetchArg("x", "o.__class__", (Root("o"), Attr("__class__")))
    with pytest.raises(CaptureFault, match="dunder"):
        fetch(handmade, {"o": 1}.__getitem__)


def test_index_on_exact_builtins_only() -> None:
    assert value_of("d['k']", d={"k": 1}) == 1
    assert value_of("l[-1]", l=[1, 2]) == 2
    assert value_of("t[0]", t=(5,)) == 5
    assert value_of("s[1]", s="ab") == "b"
    assert value_of("b[0]", b=b"A") == 65
    for obj in (Recorder(), MyDict(k=1)):
        with pytest.raises(CaptureFault, match="subscript"):
            value_of("o['k']", o=obj)
    assert CALLS == []


@pytest.mark.parametrize(
    ("expr", "obj"), [("l[5]", [1]), ("d['x']", {}), ("l['a']", [1]), ("d[1.5]", {})]
)
def test_index_faults(expr: str, obj: object) -> None:
    with pytest.raises(CaptureFault):
        value_of(expr, l=obj, d=obj)


def test_missing_root_is_a_fault() -> None:
    empty: dict[str, object] = {}
    with pytest.raises(CaptureFault, match="no variable 'y'"):
        fetch(arg("y"), empty.__getitem__)
    assert fetch_and_render(arg("y"), empty.__getitem__) == FAULT


def test_variables_are_resolved_like_names() -> None:
    a = parse_spec("r m:f $retval['k']").fetchargs[0]
    assert fetch_and_render(a, {"$retval": {"k": [1]}}.__getitem__) == [1]


def test_fetch_and_render_never_raises() -> None:
    def broken(name: str) -> object:
        raise RuntimeError("resolver bug")

    assert fetch_and_render(arg("x"), broken) == FAULT
    bad_path = FetchArg("x", "x", (Attr("x"),))
    assert fetch_and_render(bad_path, {"x": 1}.__getitem__) == FAULT
    assert (
        fetch_and_render(FetchArg("x", "x", (Root("x"), Index("k"))), {"x": 1}.__getitem__) == FAULT
    )


# --- render -------------------------------------------------------------------------


def test_scalars() -> None:
    assert render(None) is None
    assert render(True) is True
    assert render(12) == 12
    assert render(2.5) == 2.5
    assert render("hi") == "hi"
    assert render(b"a\x00") == "b'a\\x00'"
    assert render(bytearray(b"ab")) == "b'ab'"
    assert [render(v) for v in (math.nan, math.inf, -math.inf)] == ["nan", "inf", "-inf"]


def test_long_strings_and_bytes_are_truncated() -> None:
    assert render("x" * 1000, max_len=10) == "x" * 10 + "..."
    assert render(b"y" * 1000, max_len=4) == "b'yyyy'..."
    assert render("abc", max_len=3) == "abc"


def test_huge_ints_are_bounded() -> None:
    big = 10**5000
    out = render(big, max_len=50)
    assert isinstance(out, str) and out.startswith("0x") and out.endswith("...")
    assert len(out) <= 53
    assert render(2**100) == 2**100


def test_containers() -> None:
    assert render([1, (2, "a"), {"k": None}]) == [1, [2, "a"], {"k": None}]
    assert render({3, 1, 2}) == [1, 2, 3]
    assert render(frozenset({"b", "a"})) == ["a", "b"]


def test_dict_keys_become_strings() -> None:
    out = render({1: "a", "1": "b", None: 0, (1, 2): 3})
    assert out == {"1": "a", "1'": "b", "null": 0, "[1, 2]": 3}


def test_deep_nesting_is_bounded() -> None:
    deep: list[object] = []
    node = deep
    for _ in range(100):
        child: list[object] = []
        node.append(child)
        node = child
    assert render(deep, max_depth=3) == [[["<list of 1 items>"]]]
    assert render(deep, max_depth=0) == "<list of 1 items>"


def test_self_referencing_list() -> None:
    loop: list[object] = [1]
    loop.append(loop)
    assert json.dumps(render(loop))


def test_wide_containers_are_bounded() -> None:
    assert render(list(range(100)), max_items=3) == [0, 1, 2, "...(+97 more)"]
    out = render({i: i for i in range(100)}, max_items=2)
    assert out == {"0": 0, "1": 1, "...": "(+98 more)"}


def test_total_size_is_bounded() -> None:
    wide = [[list(range(30)) for _ in range(30)] for _ in range(30)]
    out = render(wide, max_nodes=100)
    assert len(json.dumps(out)) < 2000


def test_other_objects_are_named_without_running_their_code() -> None:
    r = Recorder()
    in_a_set = {r}
    CALLS.clear()
    out = render(r)
    assert out == f"<{__name__}.Recorder at {id(r):#x}>"
    assert render([r, {"k": r}]) == [out, {"k": out}]
    assert render(in_a_set) == [out]
    assert CALLS == []


def test_subclasses_of_builtins_are_opaque() -> None:
    out = render(MyDict(a=1))
    assert isinstance(out, str) and out.startswith(f"<{__name__}.MyDict at 0x")
    assert CALLS == []


def test_types() -> None:
    r = Recorder()
    assert render(r, "type") == f"{__name__}.Recorder"
    assert render({}, "type") == "dict"
    assert CALLS == []
    assert render(r, "repr") == "Recorder!"
    assert render(r, "str") == "recorder"
    assert CALLS == ["__repr__", "__str__"]


def test_repr_and_str_are_truncated_and_guarded() -> None:
    class Bad:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert render(Bad(), "repr") == FAULT
    assert render("x" * 100, "str", max_len=5) == "xxxxx..."
    assert render("ab", "repr") == "'ab'"


@pytest.mark.parametrize(
    ("value", "as_int", "as_float"),
    [
        (3, 3, 3.0),
        (True, 1, 1.0),
        (2.9, 2, 2.9),
        ("12", 12, 12.0),
        (b"7", 7, 7.0),
        ("1.5", FAULT, 1.5),
        ("x", FAULT, FAULT),
        (math.inf, FAULT, "inf"),
    ],
)
def test_int_and_float(value: object, as_int: object, as_float: object) -> None:
    assert render(value, "int") == as_int
    assert render(value, "float") == as_float


def test_int_and_float_refuse_foreign_objects() -> None:
    class Num:
        def __int__(self) -> int:
            CALLS.append("__int__")
            return 1

        def __float__(self) -> float:
            CALLS.append("__float__")
            return 1.0

    assert render(Num(), "int") == FAULT
    assert render(Num(), "float") == FAULT
    assert CALLS == []


def test_len() -> None:
    for value in (
        "abc",
        b"abc",
        [1, 2, 3],
        (1, 2, 3),
        {1, 2, 3},
        frozenset({1, 2, 3}),
        {1: 1, 2: 2, 3: 3},
    ):
        assert render(value, "len") == 3
    assert render(Recorder(), "len") == FAULT
    assert render(5, "len") == FAULT
    assert CALLS == []


def test_unknown_type_is_a_fault() -> None:
    assert render(1, "nope") == FAULT


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda children: (
        st.lists(children)
        | st.tuples(children, children)
        | st.frozensets(st.integers() | st.text())
        | st.dictionaries(st.integers() | st.text() | st.none() | st.booleans(), children)
    ),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_render_is_always_strict_json(value: object) -> None:
    out = render(value, max_len=20, max_items=5, max_depth=3)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out


@settings(max_examples=100, deadline=None)
@given(json_values, st.sampled_from([None, "repr", "str", "int", "float", "len", "type"]))
def test_every_type_renders_json(value: object, type_: str | None) -> None:
    json.dumps(render(value, type_, max_len=30), allow_nan=False)


def test_surrogates_render_as_encodable_text() -> None:
    out = render("a\ud800b")
    assert isinstance(out, str)
    out.encode("utf-8")


def test_mapping_proxy_and_other_builtins_are_opaque() -> None:
    out = render(types.MappingProxyType({}))
    assert isinstance(out, str) and out.startswith("<mappingproxy at 0x")


def test_getsets_of_extension_types_are_refused() -> None:
    import datetime

    assert type(vars(datetime.date)["year"]) is types.GetSetDescriptorType
    with pytest.raises(CaptureFault, match="descriptor"):
        value_of("d.year", d=datetime.date(2020, 1, 2))


class _Loud:
    called = 0

    def __repr__(self) -> str:
        _Loud.called += 1
        return "loud"


class _Tricky(Exception):
    @property  # type: ignore[override]
    def args(self) -> tuple[object, ...]:
        raise AssertionError("a subclass's args property must not run")

    def __repr__(self) -> str:
        raise AssertionError("the exception's __repr__ must not run")


def test_exceptions_render_from_their_args_slot_without_running_code() -> None:
    from pyprobes.lang import exception_text

    _Loud.called = 0
    exc = _Tricky("x", 3, _Loud(), [1, 2])
    text = render(exc)
    assert isinstance(text, str)
    assert text.startswith(f"{__name__}._Tricky('x', 3, <{__name__}._Loud at 0x")
    assert text.endswith(", [1, 2])")
    assert _Loud.called == 0
    assert exception_text(None) is None
    assert exception_text(ValueError("a")) == "ValueError('a')"
    assert render(ValueError("a"), "repr") == "ValueError('a')"  # :repr asks for the real one


def test_a_huge_exception_argument_is_bounded_without_being_built() -> None:
    from pyprobes.lang import exception_text

    exc = ValueError(list(range(3_000_000)))
    text = exception_text(exc)
    assert text is not None and len(text) <= 203
    assert text.startswith("ValueError([0, 1, 2")
