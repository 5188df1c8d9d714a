"""Exit summary: an aligned hits/misses/lost table ending with the lost total."""

from __future__ import annotations

from pyprobes.output import SummaryRow, format_summary


def test_table_is_aligned_and_ends_with_lost_total() -> None:
    text = format_summary(
        [SummaryRow("slow_loads", 12, 0, 0), SummaryRow("r_loads_0", 1234, 1, 3)], 3
    )
    assert text == (
        "EVENT       HITS  LOST  MISSES\n"
        "slow_loads    12     0       0\n"
        "r_loads_0   1234     3       1\n"
        "pyprobes: warning: misses on r_loads_0: more calls were in flight at once than the"
        " return probe's instances (maxactive), and the calls missed are in no event or"
        " aggregation; give it more with rN, e.g. 'r1000000:EVENT TARGET'\n"
        "3 events lost (LOST: probe hits whose events were never written: the output could"
        " not keep up, or failed)\n"
    )


def test_no_miss_no_hint() -> None:
    text = format_summary([SummaryRow("slow_loads", 12, 0, 0)], 0)
    assert "maxactive" not in text


def test_plain_tuples_are_accepted_and_one_event_is_singular() -> None:
    text = format_summary([("e", 1, 0, 1)], 1)
    assert text.splitlines()[-1].startswith("1 event lost (LOST: probe hits whose events")


def test_lost_is_explained_only_when_not_zero() -> None:
    """Issue 17.12: a summary with losses says what LOST means; a clean one stays short."""
    assert format_summary([("e", 3, 0, 2)], 2).splitlines()[-1] == (
        "2 events lost (LOST: probe hits whose events were never written: the output could"
        " not keep up, or failed)"
    )
    assert format_summary([("e", 3, 0, 0)], 0).splitlines()[-1] == "0 events lost"


def test_no_rows_still_reports_lost() -> None:
    assert format_summary([], 0) == "0 events lost\n"


def test_event_names_are_escaped_for_the_terminal() -> None:
    """Issue 18.4: an attached process names the events of its summary rows."""
    text = format_summary([SummaryRow("e\x1b[2J\x9b\u202e", 1, 1, 0)], 0)
    assert text.replace("\n", "").isprintable()
    assert text.splitlines()[1].startswith("e\\x1b[2J\\x9b\\u202e  ")
    assert "misses on e\\x1b[2J\\x9b\\u202e:" in text


def test_filtered_and_events_where_known_and_hits_that_made_no_event_are_said() -> None:
    """Issue 13.6: hits are the filtered, the events and the lost; what is left is named."""
    text = format_summary(
        [
            SummaryRow("e", 10, 0, 1, filtered=3, events=6),
            SummaryRow("r", 5, 2, 0, filtered=0, events=4),  # one call still running
            SummaryRow("agg", 7, 0, 0, filtered=2),  # no events written: "-"
        ],
        1,
    )
    lines = text.splitlines()
    assert [line.split() for line in lines[:4]] == [
        ["EVENT", "HITS", "FILTERED", "EVENTS", "LOST", "MISSES"],
        ["e", "10", "3", "6", "1", "0"],
        ["r", "5", "0", "4", "0", "2"],
        ["agg", "7", "2", "-", "0", "0"],
    ]
    assert lines[4].startswith("pyprobes: warning: misses on r:")
    assert lines[5] == (
        "pyprobes: hits that made no event: r (1): calls still running at the end (a return"
        " probe's event is made when the call returns), or a handler that failed"
    )


def test_hits_that_add_up_get_no_note() -> None:
    text = format_summary([SummaryRow("e", 10, 0, 1, filtered=3, events=6)], 1)
    assert "made no event" not in text
