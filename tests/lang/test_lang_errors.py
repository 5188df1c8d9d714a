"""Every documented error form: one SpecError naming the spec, the column and what was expected."""

from __future__ import annotations

import pytest

from pyprobes.engine.errors import ProbeError, SpecError
from pyprobes.lang import parse_spec


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    err = info.value
    assert isinstance(err, ProbeError) and isinstance(err, ValueError)
    assert str(err).startswith(f"bad probe spec '{text.strip()}': column {err.column}: ")
    assert err.spec == text.strip()
    return err


def detail(err: SpecError) -> str:
    return str(err).split(f"column {err.column}: ", 1)[1]


def test_message_of_the_issue() -> None:
    err = error("p:x json:loads s:strr")
    assert str(err) == (
        "bad probe spec 'p:x json:loads s:strr': column 18: unknown type 'strr' "
        "(expected one of repr, str, int, float, len, type; did you mean 'str'?)"
    )
    assert err.column == 18


@pytest.mark.parametrize(
    ("text", "column", "suggestion"),
    [
        ("k json:loads", 1, "did you mean 'p'?"),
        ("P json:loads", 1, "did you mean 'p'?"),
        ("kretprobe json:loads", 1, "did you mean 'r'?"),
        ("k:ev json:loads", 1, "did you mean 'p'?"),
        ("xyz json:loads", 1, "expected p, r or rMAXACTIVE)"),
    ],
)
def test_bad_kind(text: str, column: int, suggestion: str) -> None:
    err = error(text)
    assert err.column == column
    assert detail(err).startswith("unknown probe kind")
    assert suggestion in str(err)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r-1 json:loads", "bad maxactive '-1'"),
        ("r1.5 json:loads", "bad maxactive '1.5'"),
        ("r0 json:loads", "maxactive must be positive"),
        ("r1048577 json:loads", "too big (at most 1048576)"),
        ("r99999999999999999999 json:loads", "too big"),
        ("p5 json:loads", "only applies to return probes"),
    ],
)
def test_bad_maxactive(text: str, message: str) -> None:
    err = error(text)
    assert err.column == 2
    assert message in detail(err)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("p:1x json:loads", 3, "bad event name '1x'"),
        ("p:my-ev json:loads", 3, "bad event name 'my-ev'"),
        ("p: json:loads", 3, "expected EVENT or GROUP/EVENT"),
        ("p:g/ json:loads", 5, "bad event name '(empty)'"),
        ("p:/e json:loads", 3, "bad group name ''"),
        ("p:g-1/e json:loads", 3, "bad group name 'g-1'"),
        ("p:a/b/c json:loads", 5, "bad event name 'b/c'"),
    ],
)
def test_bad_group_or_event(text: str, column: int, message: str) -> None:
    err = error(text)
    assert (err.column, detail(err)[: len(message)]) == (column, message)


@pytest.mark.parametrize(("text", "column"), [("p", 2), ("p:x", 4), ("r10:x", 6), ("p if x", 3)])
def test_missing_target(text: str, column: int) -> None:
    err = error(text)
    assert err.column == column
    assert detail(err).startswith("missing target (expected MODULE:QUALNAME")


def test_empty_spec() -> None:
    assert detail(error("   ")).startswith("empty spec (expected [p|r[MAXACTIVE]]")


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("loads", 1, "expected a TARGET"),
        (":loads", 1, "expected a MODULE or FILE.py before ':'"),
        ("json:", 6, "expected a QUALNAME or LINE"),
        ("json..x:loads", 6, "bad module part '(empty)'"),
        ("js-on:loads", 1, "bad module part 'js-on'"),
        ("json:lo-ads", 6, "bad qualified name part 'lo-ads'"),
        ("json:a..b", 8, "bad qualified name part '(empty)'"),
        ("json:loads+", 12, "bad offset ''"),
        ("json:loads+abc", 12, "bad offset 'abc'"),
        ("json:loads+0x", 12, "bad offset '0x'"),
        ("json:loads+-4", 12, "bad offset '-4'"),
        ("json:loads+12abc", 12, "bad offset '12abc'"),
        ("json:loads+1234567890123", 12, "offset '1234567890123' is too large"),
        ("json:loads:x", 12, "bad relative line 'x'"),
        ("json:loads:-1", 12, "bad relative line '-1'"),
        ("json:loads%ret", 11, "unexpected '%ret' after the target"),
        ("app.py:main", 8, "expected a LINE number after 'app.py:'"),
        ("app.py:0", 8, "line numbers start at 1"),
        ("json:0", 6, "line numbers start at 1"),
        ("json:*+4", 7, "a wildcard target cannot take an offset"),
        ("json:*+0", 7, "a wildcard target cannot take an offset"),
        ("json:*:3", 7, "a wildcard target cannot take a relative line"),
        ("js*:12", 5, "a wildcard target cannot take a line number"),
    ],
)
def test_bad_target(text: str, column: int, message: str) -> None:
    err = error(text)
    assert (err.column, detail(err)[: len(message)]) == (column, message)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("r json:loads+4", 13, "a return probe cannot take an offset (+4)"),
        ("r json:loads+0x10", 13, "a return probe cannot take an offset (+16)"),
        ("json:loads+4%return", 11, "a return probe cannot take an offset (+4)"),
        ("r json:loads:3", 13, "a return probe cannot take a line"),
        ("r app.py:3", 10, "a return probe cannot take a line"),
        ("r json:12", 8, "a return probe cannot take a line"),
        ("p json:loads%return", 13, "'%return' makes a return probe, but the kind is 'p'"),
    ],
)
def test_return_probe_restrictions(text: str, column: int, message: str) -> None:
    err = error(text)
    assert (err.column, detail(err)[: len(message)]) == (column, message)


@pytest.mark.parametrize("var", ["$retval", "$exception", "$duration"])
def test_return_only_variable_in_a_p_probe(var: str) -> None:
    err = error(f"p json:loads s {var}")
    assert err.column == 16
    assert detail(err) == (
        f"'{var}' is only available in return probes (use 'r' or TARGET%return; "
        "a 'p' probe fires before the function returns)"
    )
    err = error(f"json:loads s if {var} is None")
    assert err.column == 17
    assert "only available in return probes" in detail(err)


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("m:f x:", 7, "expected a TYPE after ':'"),
        (
            "m:f x:strr",
            7,
            "unknown type 'strr' (expected one of repr, str, int, float, len, type; "
            "did you mean 'str'?)",
        ),
        ("m:f x:lenn", 7, "did you mean 'len'?"),
        ("m:f x:str:len", 10, "unexpected ':' after the type 'str'"),
        ("m:f $retvl", 5, "unknown variable '$retvl'"),
        ("m:f $", 6, "expected a variable name after '$'"),
        ("m:f x.", 7, "expected an attribute name after '.'"),
        ("m:f x.1", 7, "expected an attribute name after '.'"),
        ("m:f x.__class__", 7, "dunder attribute '__class__' is not allowed in a fetch path"),
        ("m:f x.y.__dict__", 9, "dunder attribute '__dict__'"),
        ("m:f x[foo]", 7, "bad subscript key 'foo'"),
        ("m:f x[(1, 2)]", 7, "bad subscript key '(1, 2)'"),
        ("m:f x[1j]", 7, "bad subscript key '1j'"),
        ("m:f x[]", 7, "expected a literal key"),
        ("m:f x['a' 'b']", 11, "expected ']'"),
        ("m:f x]", 6, "unexpected ']'"),
        ("m:f 1x", 5, "expected an argument or local name or a $variable, got '1x'"),
        ("m:f x=", 7, "expected an argument or local name or a $variable, got 'nothing'"),
        ("m:f a.b=x", 5, "bad fetch-arg name 'a.b'"),
        ("m:f class=x", 5, "bad fetch-arg name 'class'"),
        ("m:f None", 5, "'None' is a keyword"),
        ("m:f x==3", 7, "expected an argument"),
        ("m:f x x", 7, "duplicate fetch-arg name 'x'"),
        ("m:f x n=y n=z", 11, "duplicate fetch-arg name 'n'"),
    ],
)
def test_bad_fetcharg(text: str, column: int, message: str) -> None:
    err = error(text)
    assert err.column == column
    assert message in detail(err)


def test_comparison_in_fetcharg_hints_at_if() -> None:
    assert "a filter goes after the keyword 'if'" in detail(error("m:f x==3"))


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("m:f x['abc", 7),
        ('m:f x["abc', 7),
        ("m:f x if x == 'abc", 15),
        ("m:f x if x == '''abc'", 15),
        ("m:f x['a\\']", 7),
    ],
)
def test_unterminated_string(text: str, column: int) -> None:
    err = error(text)
    assert err.column == column
    assert detail(err).startswith("unterminated string (expected a closing")


def test_unclosed_bracket() -> None:
    err = error("m:f x[0 if x")
    assert (err.column, detail(err)) == (6, "unclosed '[' (expected ']')")


def test_spec_is_one_line() -> None:
    err = error("m:f x\nm:g")
    assert err.column == 6 and "one line" in detail(err)


def test_control_characters() -> None:
    err = error("m:f \x00x")
    assert err.column == 5 and "U+0000" in detail(err)
    assert "U+D800" in detail(error("m:f x\ud800"))


def test_leading_whitespace_does_not_shift_columns() -> None:
    err = error("   m:f x:strr")
    assert err.column == 7 and err.spec == "m:f x:strr"
