"""Property tests: parsing returns a ProbeSpec or raises SpecError, and specs round-trip."""

from __future__ import annotations

import keyword

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyprobes.engine.errors import SpecError
from pyprobes.lang import (
    TYPES,
    Attr,
    FetchArg,
    Index,
    ProbeSpec,
    Root,
    Target,
    compile_filter,
    parse_spec,
    parse_spec_file,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = [
    "json:loads",
    "p:x json:loads s:str",
    "r10:grp/ev json:loads%return $retval:repr $duration if $duration > 1.5ms and s in ('a', 'b')",
    "myapp.*:handle_* req.headers['x host'] if $thread != 'Main'",
    'app/server.py:17 self.items[0] d["k"][-1].x:len if x is not None or not (y <= 3)',
    "pkg.mod:outer.<locals>.inner+0x10 n=a.b:int if n == 3",
    "json:loads:3 $args $caller $stack",
]
SPEC_CHARS = "pr:/ .*?+%$'\"[]=<>!()#,-_0123456789abcdefxyzifnotandorsmu\t\\é"


def parse_or_spec_error(text: str) -> None:
    try:
        result = parse_spec(text)
    except SpecError as err:
        assert 1 <= err.column <= max(len(err.spec), 0) + 1
        assert str(err).startswith("bad probe spec '")
        return
    assert isinstance(result, ProbeSpec)
    # whatever parses, its canonical text parses back to the same spec
    assert parse_spec(str(result)) == result


@FUZZ
@given(st.text(max_size=80))
def test_random_text(text: str) -> None:
    parse_or_spec_error(text)


@FUZZ
@given(st.text(alphabet=SPEC_CHARS, max_size=80))
def test_random_spec_like_text(text: str) -> None:
    parse_or_spec_error(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.text(alphabet=SPEC_CHARS, min_size=1, max_size=3))
        if op == "insert":
            text = text[:at] + piece + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + len(piece) :]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


@FUZZ
@given(mutated())
def test_mutated_valid_specs(text: str) -> None:
    parse_or_spec_error(text)


@FUZZ
@given(st.lists(st.one_of(mutated(), st.sampled_from(["", "# c", "  "])), max_size=5))
def test_spec_files(lines: list[str]) -> None:
    try:
        specs = parse_spec_file("\n".join(lines))
    except SpecError as err:
        assert str(err).startswith("line ")
        return
    assert all(isinstance(s, ProbeSpec) for s in specs)


# --- generated valid specs ----------------------------------------------------------

idents = st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s) and not (s.startswith("__") and s.endswith("__"))
)
event_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
# A left part ending in .py names a file; a module named p or r needs an explicit kind.
modules = (
    st.lists(idents, min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda m: m not in ("p", "r") and not m.endswith(".py"))
)
qualnames = st.lists(idents | st.just("<locals>"), min_size=1, max_size=3).map(".".join)
keys = st.one_of(
    st.text(alphabet="abc xyz'\"]\\[", max_size=6),
    st.integers(-100, 100),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


@st.composite
def targets(draw: st.DrawFn, kind: str) -> tuple[str, Target]:
    module, qualname = draw(modules), draw(qualnames)
    forms = ["entry", "wild"] + (["offset", "rel", "abs", "file"] if kind == "p" else ["return"])
    form = draw(st.sampled_from(forms))
    if form == "offset":
        offset = draw(st.integers(0, 10_000))
        text = draw(st.sampled_from([f"+{offset}", f"+{offset:#x}"]))
        return f"{module}:{qualname}{text}", Target(module=module, qualname=qualname, offset=offset)
    if form == "rel":
        line = draw(st.integers(0, 500))
        return f"{module}:{qualname}:{line}", Target(
            module=module, qualname=qualname, rel_line=line
        )
    if form == "abs":
        line = draw(st.integers(1, 10**6))
        return f"{module}:{line}", Target(module=module, abs_line=line)
    if form == "file":
        line = draw(st.integers(1, 10**6))
        path = "/".join(draw(st.lists(idents, min_size=1, max_size=3))) + ".py"
        return f"{path}:{line}", Target(path=path, abs_line=line)
    if form == "wild":
        module = draw(st.sampled_from([module, module + ".*", "*"]))
        name = draw(idents)
        qualname = draw(st.sampled_from([qualname + ".*", "*", f"?{name}", f"{name}*", "*.x?"]))
    is_return = kind == "r"
    suffix = draw(st.sampled_from(["%return", ""])) if is_return else ""
    target = Target(module=module, qualname=qualname, offset=0, is_return=is_return)
    return f"{module}:{qualname}{suffix}", target


@st.composite
def fetchargs(draw: st.DrawFn, kind: str) -> tuple[str, FetchArg]:
    variables = ["$args", "$thread", "$caller", "$stack"]
    if kind == "r":
        variables += ["$retval", "$exception", "$duration"]
    root = draw(idents | st.sampled_from(variables))
    steps: list[Attr | Index] = draw(st.lists(idents.map(Attr) | keys.map(Index), max_size=3))
    expr = root + "".join(str(s) for s in steps)
    type_ = draw(st.none() | st.sampled_from(TYPES))
    name = draw(st.none() | idents)
    text = (f"{name}=" if name else "") + expr + (f":{type_}" if type_ else "")
    return text, FetchArg(name or expr, expr, (Root(root), *steps), type_)


@st.composite
def specs(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    kind = draw(st.sampled_from(["p", "r"]))
    maxactive = draw(st.integers(1, 4096)) if kind == "r" and draw(st.booleans()) else 0
    header_kind = f"{kind}{maxactive or ''}"
    event = draw(st.none() | event_names)
    group = draw(st.none() | event_names) if event else None
    target_text, target = draw(targets(kind))
    explicit = kind == "p" or maxactive or not target_text.endswith("%return")
    header = header_kind if explicit or event else ""
    if event:
        header += f":{group}/{event}" if group else f":{event}"
    args = draw(st.lists(fetchargs(kind), max_size=4, unique_by=lambda a: a[1].name))
    words = [header] if header else []
    words += [target_text, *(a[0] for a in args)]
    names = [a[1].name for a in args if a[1].name.isidentifier()]
    filter_text = None
    with_filter = draw(st.booleans())
    if names and with_filter:
        n = draw(st.sampled_from(names))
        op = draw(st.sampled_from(["==", "!=", "<", ">=", "in", "not in"]))
        rhs = "(1, 'a', 2.5)" if "in" in op else draw(st.sampled_from(["3", "'x y'", "10ms"]))
        filter_text = f"{n} {op} {rhs} or {n} is None"
        words += ["if", filter_text]
    expected = {
        "kind": kind,
        "maxactive": maxactive,
        "group": group or "pyprobes",
        "event": event,
        "target": target,
        "fetchargs": tuple(a[1] for a in args),
        "filter": filter_text,
    }
    return " ".join(words), expected


@settings(max_examples=300, deadline=None)
@given(specs())
def test_generated_specs_parse_and_round_trip(case: tuple[str, dict[str, object]]) -> None:
    text, expected = case
    spec = parse_spec(text)
    assert spec.kind == expected["kind"]
    assert spec.maxactive == expected["maxactive"]
    assert spec.group == expected["group"]
    if expected["event"] is not None:
        assert spec.event == expected["event"]
    assert spec.event.isidentifier()
    assert spec.target == expected["target"]
    assert spec.fetchargs == expected["fetchargs"]
    assert (spec.filter.text if spec.filter else None) == expected["filter"]
    assert spec.text == text
    # canonical forms parse back to equal values
    again = parse_spec(str(spec))
    assert again == spec
    assert parse_spec(f"{spec.kind} {spec.target}").target == spec.target


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        ["x == 1", "x < 'a'", "x in (1, 2)", "not x", "x and y or x >= 2.5", "x is None", "1 in y"]
    ),
    st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=3),
        st.lists(st.integers(), max_size=3),
        st.builds(object),
        st.floats(),
    ),
    st.one_of(
        st.none(),
        st.integers(),
        st.dictionaries(st.integers(), st.integers(), max_size=3),
        st.builds(object),
    ),
)
def test_filters_never_raise(text: str, x: object, y: object) -> None:
    f = compile_filter(text, ["x", "y"])
    assert f({"x": x, "y": y}) in (True, False)
