"""Every TARGET form of the probe language, its canonical text and its default event name."""

from __future__ import annotations

import pytest

from pyprobes.lang import ProbeSpec, Target, parse_spec


def target_of(text: str) -> Target:
    return parse_spec(text).target


def test_function_entry() -> None:
    t = target_of("json:loads")
    assert t == Target(module="json", qualname="loads", offset=0)
    assert not t.is_return and not t.has_wildcards
    assert str(t) == "json:loads+0"


def test_main_module_and_dotted_qualname() -> None:
    t = target_of("__main__:Server.handle")
    assert (t.module, t.qualname, t.offset) == ("__main__", "Server.handle", 0)


def test_nested_function_with_locals() -> None:
    t = target_of("pkg.mod:outer.<locals>.inner")
    assert t.qualname == "outer.<locals>.inner"
    assert str(t) == "pkg.mod:outer.<locals>.inner+0"


def test_lambda_qualname_part() -> None:
    assert target_of("m:f.<locals>.<lambda>").qualname == "f.<locals>.<lambda>"


@pytest.mark.parametrize(
    ("text", "offset"),
    [("json:loads+0", 0), ("json:loads+12", 12), ("json:loads+0x1a", 26), ("json:loads+0X10", 16)],
)
def test_bytecode_offset_decimal_and_hex(text: str, offset: int) -> None:
    t = target_of(text)
    assert t.offset == offset
    assert str(t) == f"json:loads+{offset}"


def test_relative_line() -> None:
    t = target_of("json:loads:3")
    assert (t.rel_line, t.offset, t.abs_line) == (3, None, None)
    assert str(t) == "json:loads:3"


def test_relative_line_zero_is_the_def_line() -> None:
    assert target_of("json:loads:0").rel_line == 0


def test_percent_return_makes_a_return_probe() -> None:
    spec = parse_spec("json:loads%return")
    assert spec.kind == "r"
    assert spec.target == Target(module="json", qualname="loads", offset=0, is_return=True)
    assert str(spec.target) == "json:loads%return"


def test_r_kind_marks_the_target_as_return() -> None:
    assert parse_spec("r json:loads").target == parse_spec("json:loads%return").target
    assert parse_spec("r json:loads+0").target.is_return


@pytest.mark.parametrize("path", ["app.py", "path/to/file.py", "/abs/dir/app.py", "scripts/run"])
def test_file_line(path: str) -> None:
    t = target_of(f"{path}:17")
    assert t == Target(path=path, abs_line=17)
    assert t.module is None and t.qualname is None
    assert str(t) == f"{path}:17"


def test_module_absolute_line() -> None:
    t = target_of("pkg.mod:120")
    assert t == Target(module="pkg.mod", abs_line=120)
    assert str(t) == "pkg.mod:120"


@pytest.mark.parametrize("text", ["myapp.*:*", "json:*load*", "js?n:loads", "json:Decoder.*"])
def test_wildcards(text: str) -> None:
    t = target_of(text)
    assert t.has_wildcards
    assert str(t) == text
    assert t.offset == 0


def test_wildcard_return_probe() -> None:
    spec = parse_spec("myapp.*:*%return")
    assert spec.kind == "r" and spec.target.has_wildcards
    assert str(spec.target) == "myapp.*:*%return"


def test_wildcard_matching() -> None:
    t = target_of("myapp.*:handle_*")
    assert t.matches("myapp.web", "handle_get")
    assert t.matches("myapp.web.deep", "handle_")
    assert not t.matches("otherapp.web", "handle_get")
    assert not t.matches("myapp.web", "Handler.get")
    assert target_of("json:loads").matches("json", "loads")
    assert not target_of("app.py:3").matches("app", "x")


@pytest.mark.parametrize(
    ("text", "event"),
    [
        ("json:loads", "p_loads_0"),
        ("r json:loads", "r_loads_0"),
        ("json:loads%return", "r_loads_0"),
        ("json:JSONDecoder.decode+24", "p_decode_24"),
        ("json:loads+0x10", "p_loads_16"),
        ("json:loads:3", "p_loads_L3"),
        ("m:outer.<locals>.inner", "p_inner_0"),
        ("m:f.<locals>.<lambda>", "p__lambda__0"),
        ("app.py:17", "p_app_17"),
        ("path/to/my-app.py:5", "p_my_app_5"),
        ("pkg.mod:120", "p_pkg_mod_120"),
        ("json:*load*", "p_json_star_load_star_0"),
        ("myapp.*:*", "p_myapp_star_star_0"),
        ("r myapp.*:get?", "r_myapp_star_get_any_0"),
    ],
)
def test_default_event_names(text: str, event: str) -> None:
    spec = parse_spec(text)
    assert spec.event == event
    assert spec.group == "pyprobes"
    assert spec.event.isidentifier()


def test_explicit_event_and_group_override_defaults() -> None:
    spec = parse_spec("p:myprobe json:loads")
    assert (spec.group, spec.event) == ("pyprobes", "myprobe")
    spec = parse_spec("r:web/slow json:loads")
    assert (spec.kind, spec.group, spec.event) == ("r", "web", "slow")


def test_canonical_spec_text_parses_back() -> None:
    spec = parse_spec("r5:g/e json:loads s n=s:len $retval:repr if n > 3 and $duration > 1ms")
    assert (
        str(spec) == "r5:g/e json:loads%return s n=s:len $retval:repr if n > 3 and $duration > 1ms"
    )
    again = parse_spec(str(spec))
    assert again == spec
    assert isinstance(again, ProbeSpec)
