"""The kind header, fetch args and spec files of the probe language."""

from __future__ import annotations

import pytest

from pyprobes.engine.errors import SpecError
from pyprobes.lang import Attr, FetchArg, Index, ProbeSpec, Root, parse_spec, parse_spec_file


def args_of(text: str) -> tuple[FetchArg, ...]:
    return parse_spec(text).fetchargs


# --- kind, maxactive, group, event -------------------------------------------------


def test_p_is_the_default_kind() -> None:
    spec = parse_spec("json:loads")
    assert (spec.kind, spec.maxactive, spec.group) == ("p", 0, "pyprobes")
    assert not spec.is_return
    assert spec.fetchargs == () and spec.filter is None


def test_explicit_kinds() -> None:
    assert parse_spec("p json:loads").kind == "p"
    assert parse_spec("r json:loads").kind == "r"
    assert parse_spec("r json:loads").is_return


@pytest.mark.parametrize(
    ("text", "maxactive"), [("r10", 10), ("r1", 1), ("r4096", 4096), ("r0x20", 32)]
)
def test_maxactive(text: str, maxactive: int) -> None:
    spec = parse_spec(f"{text} json:loads")
    assert (spec.kind, spec.maxactive) == ("r", maxactive)
    spec = parse_spec(f"{text}:ev json:loads")
    assert (spec.maxactive, spec.event) == (maxactive, "ev")


def test_group_and_event() -> None:
    spec = parse_spec("p:my_group/my_event json:loads")
    assert (spec.group, spec.event) == ("my_group", "my_event")


def test_text_is_kept_and_ignored_by_equality() -> None:
    a = parse_spec("  json:loads  s ")
    b = parse_spec("p:pyprobes/p_loads_0 json:loads+0 s")
    assert a.text == "json:loads  s"
    assert a == b


def test_tabs_separate_words() -> None:
    assert args_of("json:loads\ts\tb")[1].name == "b"


def test_single_letter_module_needs_an_explicit_kind() -> None:
    spec = parse_spec("p p:loads")
    assert spec.target.module == "p"
    with pytest.raises(SpecError, match="missing target"):
        parse_spec("p:loads")


def test_other_single_letter_modules_are_targets() -> None:
    spec = parse_spec("m:f x")
    assert (spec.target.module, spec.target.qualname) == ("m", "f")
    assert spec.fetchargs[0].name == "x"


# --- fetch args ---------------------------------------------------------------------


def test_plain_names() -> None:
    s, obj = args_of("json:loads s obj")
    assert s == FetchArg(name="s", expr="s", path=(Root("s"),), type=None)
    assert obj.root == "obj"


def test_attribute_path() -> None:
    (arg,) = args_of("m:f self.conn.peer")
    assert arg.path == (Root("self"), Attr("conn"), Attr("peer"))
    assert arg.name == "self.conn.peer"


def test_subscript_paths_with_every_literal_key() -> None:
    (arg,) = args_of("""m:f d["k"][1].x['y'][-2][1.5][True][None]""")
    assert arg.path == (
        Root("d"),
        Index("k"),
        Index(1),
        Attr("x"),
        Index("y"),
        Index(-2),
        Index(1.5),
        Index(True),
        Index(None),
    )
    assert arg.expr == """d["k"][1].x['y'][-2][1.5][True][None]"""


def test_quoted_keys_may_hold_spaces_brackets_and_escapes() -> None:
    host, odd, esc = args_of(r"""m:f req.headers['x host'] d["a ] [b"] e['it\'s']""")
    assert host.path[-1] == Index("x host")
    assert odd.path[-1] == Index("a ] [b")
    assert esc.path[-1] == Index("it's")


def test_spaces_inside_brackets_are_allowed() -> None:
    (arg,) = args_of("m:f d[ 'k' ]")
    assert arg.path == (Root("d"), Index("k"))


def test_named_fetch_arg() -> None:
    (arg,) = args_of("m:f host=req.headers['host']")
    assert arg.name == "host"
    assert arg.expr == "req.headers['host']"
    assert str(arg) == "host=req.headers['host']"


def test_equals_inside_a_key_is_not_a_name() -> None:
    (arg,) = args_of("m:f d['a=b']")
    assert arg.name == "d['a=b']"
    assert arg.path[-1] == Index("a=b")


@pytest.mark.parametrize("type_", ["repr", "str", "int", "float", "len", "type"])
def test_every_type(type_: str) -> None:
    (arg,) = args_of(f"m:f n=x.y:{type_}")
    assert (arg.name, arg.expr, arg.type) == ("n", "x.y", type_)
    assert str(arg) == f"n=x.y:{type_}"


def test_default_name_excludes_the_type() -> None:
    (arg,) = args_of("m:f items:len")
    assert (arg.name, arg.expr, arg.type) == ("items", "items", "len")


@pytest.mark.parametrize("var", ["$args", "$thread", "$caller", "$stack"])
def test_variables_available_everywhere(var: str) -> None:
    for kind in ("p", "r"):
        (arg,) = args_of(f"{kind} m:f {var}")
        assert arg.path == (Root(var),) and arg.name == var
        assert arg.path[0] == Root(var) and Root(var).is_special


@pytest.mark.parametrize("var", ["$retval", "$exception", "$duration"])
def test_return_only_variables_in_return_probes(var: str) -> None:
    (arg,) = args_of(f"r m:f {var}")
    assert arg.root == var
    (arg,) = args_of(f"m:f%return x={var}:repr")
    assert (arg.name, arg.root, arg.type) == ("x", var, "repr")


def test_paths_from_variables() -> None:
    (arg,) = args_of("r m:f $retval['items'][0].name")
    assert arg.path == (Root("$retval"), Index("items"), Index(0), Attr("name"))


def test_unicode_names() -> None:
    (arg,) = args_of("m:f café.naïve")
    assert arg.path == (Root("café"), Attr("naïve"))


# --- spec files ---------------------------------------------------------------------


def test_spec_file_skips_comments_and_blank_lines() -> None:
    text = """
# probes for the json module
json:loads s

   # indented comment
r json:loads $retval:len if $duration > 1ms
\tapp.py:17 x
"""
    specs = parse_spec_file(text)
    assert [s.event for s in specs] == ["p_loads_0", "r_loads_0", "p_app_17"]
    assert all(isinstance(s, ProbeSpec) for s in specs)
    assert specs[2].text == "app.py:17 x"


def test_spec_file_empty() -> None:
    assert parse_spec_file("") == []
    assert parse_spec_file("# nothing\n\n") == []


def test_spec_file_error_names_the_line() -> None:
    text = "json:loads s\n# c\njson:dumps x:strr\n"
    with pytest.raises(SpecError) as info:
        parse_spec_file(text)
    err = info.value
    assert str(err).startswith("line 3: bad probe spec 'json:dumps x:strr': column 14: ")
    assert err.spec == "json:dumps x:strr"
    assert err.column == 14
