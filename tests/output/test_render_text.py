"""Text renderer: trace_pipe-style lines, exact format, human durations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from output_helpers import make_event

from pyprobes.output import Event, TextRenderer, format_duration, format_value, get_renderer


def _event(kind: str = "p", args: dict[str, object] | None = None, **kw: object) -> Event:
    fields: dict[str, object] = dict(
        event="slow_loads", group="pyprobes", probe="json:loads+0", location="app.py:17",
        time_ns=12_345_678_000, pid=1234, thread_id=5678, thread_name="MainThread",
    )  # fmt: skip
    return make_event(kind, args, **{**fields, **kw})


def test_entry_line_is_exact() -> None:
    line = TextRenderer().render(_event(args={"s": '{"a": 1}'}))
    assert line == "MainThread-1234 [5678] 12.345678: slow_loads: (json:loads+0) s='{\"a\": 1}'\n"


def test_return_line_shows_return_site_and_human_duration() -> None:
    ev = _event(
        "r",
        event="r_loads_0",
        probe="json:loads",
        args={"$retval": {"a": 1}, "$duration": 1_200_000},
        retval={"a": 1},
        duration_ns=1_200_000,
    )
    assert TextRenderer().render(ev) == (
        'MainThread-1234 [5678] 12.345678: r_loads_0: (app.py:17 <- json:loads) $retval={"a": 1} '
        "$duration=1.2ms\n"
    )


def test_no_args_means_no_trailing_space() -> None:
    assert TextRenderer().render(_event()).endswith("(json:loads+0)\n")


def test_time_is_time_ns_over_1e9_with_six_decimals() -> None:
    line = TextRenderer().render(_event(time_ns=1_500))
    assert " 0.000002: " in line  # 1.5 us rounds to 2 us at 6 decimals
    line = TextRenderer().render(_event(time_ns=3_000_000_000))
    assert " 3.000000: " in line


def test_durations_in_human_units() -> None:
    assert format_duration(0) == "0ns"
    assert format_duration(850) == "850ns"
    assert format_duration(999) == "999ns"
    assert format_duration(1_000) == "1.0us"
    assert format_duration(12_300) == "12.3us"
    assert format_duration(999_949) == "999.9us"
    assert format_duration(999_960) == "1.0ms"  # the unit follows the rounded value
    assert format_duration(1_200_000) == "1.2ms"
    assert format_duration(2_500_000_000) == "2.50s"
    assert format_duration(7_200_000_000_000) == "7200.00s"


def test_only_dollar_duration_is_humanised() -> None:
    ev = _event(args={"duration": 1_200_000, "$duration": 850})
    assert TextRenderer().render(ev).endswith(" duration=1200000 $duration=850ns\n")


def test_values_are_compact() -> None:
    assert format_value("it's") == repr("it's")
    assert format_value(None) == "None"
    assert format_value(True) == "True"
    assert format_value(3) == "3"
    assert format_value(1.5) == "1.5"
    assert format_value(float("nan")) == "nan"
    assert format_value([1, "a", None]) == '[1, "a", null]'
    assert format_value({"k": [1, 2]}) == '{"k": [1, 2]}'
    assert format_value({"k": float("inf")}) == '{"k": "Infinity"}'
    # Past CPython's int-to-str limit a huge int is shown in hex rather than raising.
    assert format_value(1 << 20_000).startswith("0x1000")


def test_a_newline_in_a_name_cannot_split_the_line() -> None:
    line = TextRenderer().render(_event(thread_name="a\nb", args={"x\ry": 1}))
    assert line.startswith("a\\nb-1234 ") and "x\\ry=1" in line
    assert line.count("\n") == 1


def test_get_renderer_text_is_text_renderer_without_framing() -> None:
    r = get_renderer("text")
    assert isinstance(r, TextRenderer)
    assert r.header() == "" and r.footer() == ""


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=())),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(min_size=1), json_values, max_size=4))
def test_any_captured_values_give_one_encodable_line(args: dict[str, object]) -> None:
    line = TextRenderer().render(_event(args=args))
    assert line.endswith("\n") and line.count("\n") == 1
    line.encode("utf-8")  # no lone surrogates reach the sink


# Issue 18.4: what a terminal acts on: C0 (ESC, BEL), DEL, C1 (CSI U+009B), bidi overrides
# and isolates, and a lone surrogate.
HOSTILE = "\x1b]0;owned\x07\x7f\x9b2J\u202eevil\u2066\u2069\ud800"
HOSTILE_CHARS = set("\x1b\x07\x7f\x9b\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ud800")


def test_untrusted_text_in_every_field_is_escaped_for_the_terminal() -> None:
    ev = _event(
        "r",
        thread_name=HOSTILE,
        location=f"/tmp/{HOSTILE}.py:3",
        probe=f"mod:{HOSTILE}",
        args={"s": HOSTILE, "l": [HOSTILE, {HOSTILE: HOSTILE}], HOSTILE: 1},
        retval=HOSTILE,
        exception=HOSTILE,
    )
    line = TextRenderer().render(ev)
    assert not HOSTILE_CHARS & set(line), [c for c in line if c in HOSTILE_CHARS]
    assert line.count("\n") == 1 and line.endswith("\n")
    line.encode("utf-8")
    assert line.startswith("\\x1b]0;owned\\x07\\x7f\\x9b2J\\u202eevil\\u2066\\u2069\\ud800-1234 ")
    for c in "\u202a\u202b\u202c\u202d\u2067\u2068":
        assert "\\u" + format(ord(c), "04x") in TextRenderer().render(_event(thread_name=c))


def test_printable_unicode_is_kept() -> None:
    line = TextRenderer().render(_event(thread_name="wörker-工作", args={"s": "é"}))
    assert line.startswith("wörker-工作-1234 ") and "s='é'" in line


def test_a_return_that_raised_says_so_instead_of_retval_none() -> None:
    ev = _event(
        "r",
        probe="json:loads",
        site="app:main:17",
        args={"$retval": None, "n": 1},
        exception="ValueError('bad')",
        duration_ns=5,
    )
    assert TextRenderer().render(ev).endswith("(app:main:17 <- json:loads) n=1 raised=ValueError\n")
    shown = _event("r", probe="p", args={"$exception": "KeyError('k')"}, exception="KeyError('k')")
    assert TextRenderer().render(shown).endswith("(app.py:17 <- p) $exception=\"KeyError('k')\"\n")
