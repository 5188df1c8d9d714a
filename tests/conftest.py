"""Every test starts and ends with no probe registered and our sys.monitoring tool id free.

Tests that do not depend on the dispatch core (marked ``core_independent``: the modules in
CORE_INDEPENDENT, or any test with the marker) run once per CPython, not once per core:
``scripts/dev test`` runs the C core first with PYPROBES_CORE_INDEPENDENT_FILE naming a file,
where this conftest writes the ones that ran; the ``PYPROBES_CORE=python`` run of the same
CPython then skips exactly those, with the reason in the summary. Without that file (a run by
hand, or no C core built) every test runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyprobes
from pyprobes.engine import registry, tool

#: Test modules (relative to tests/) that touch no engine: parsing, capture, rendering,
#: aggregation, the writer and its queue, the protocol, paths, building the extension.
CORE_INDEPENDENT = frozenset(
    {
        "attach/test_paths.py",
        "attach/test_protocol.py",
        "attach/test_ps.py",
        "output/test_aggregate.py",
        "output/test_histogram.py",
        "output/test_stats.py",
        "output/test_aggregate_data.py",
        "output/test_event_queue.py",
        "output/test_event_record.py",
        "output/test_event_writer.py",
        "output/test_exit_summary.py",
        "output/test_metrics_server.py",
        "output/test_output_exports.py",
        "output/test_prometheus.py",
        "output/test_render_chrome.py",
        "output/test_render_json.py",
        "output/test_render_text.py",
        "output/test_sinks.py",
        "lang/test_lang_capture.py",
        "lang/test_lang_errors.py",
        "lang/test_lang_exports.py",
        "lang/test_lang_filter.py",
        "lang/test_lang_fuzz.py",
        "lang/test_lang_parser.py",
        "lang/test_lang_target.py",
        "test_setup.py",
    }
)
MARKER = "core_independent"
RAN_FILE_ENV = "PYPROBES_CORE_INDEPENDENT_FILE"
_TESTS = Path(__file__).parent
_python = sys.version.split()[0]
_ran_here: list[str] = []  # core-independent tests that ran in this (C-core) run
_skipped_here = 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: the test does not depend on the dispatch core; with {RAN_FILE_ENV}"
        " (scripts/dev test) the python-core run skips it when it ran in the C-core run",
    )


def _ran_in_c_run(path: str) -> set[str]:
    """The core-independent tests the C-core run of this CPython wrote to ``path``."""
    try:
        head, *ids = Path(path).read_text().splitlines()
    except (OSError, ValueError):
        return set()
    return set(ids) if head == f"{_python} c" else set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    global _skipped_here
    for item in items:
        rel = item.path.relative_to(_TESTS).as_posix() if item.path.is_relative_to(_TESTS) else ""
        if rel in CORE_INDEPENDENT:
            item.add_marker(MARKER)
    path = os.environ.get(RAN_FILE_ENV)
    if not path or pyprobes.core_name() != "python":
        return
    ran = _ran_in_c_run(path)
    skip = pytest.mark.skip(
        reason=f"core-independent: ran in the C-core run of CPython {_python} ({RAN_FILE_ENV})"
    )
    for item in items:
        if item.get_closest_marker(MARKER) is not None and item.nodeid in ran:
            item.add_marker(skip)
            _skipped_here += 1


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and MARKER in report.keywords:
        _ran_here.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(RAN_FILE_ENV)
    if path and pyprobes.core_name() == "c":
        Path(path).write_text("\n".join([f"{_python} c", *_ran_here]) + "\n")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not os.environ.get(RAN_FILE_ENV):
        return
    if pyprobes.core_name() == "c":
        line = f"{len(_ran_here)} ran here; the python-core run of CPython {_python} skips them"
    else:
        line = f"{_skipped_here} skipped here: they ran in the C-core run of CPython {_python}"
    terminalreporter.write_line(f"core-independent tests: {line}")


def _leftovers() -> list[str]:
    problems = []
    probes = pyprobes.registered_probes()
    if probes:
        problems.append(f"probes still registered: {probes!r}")
    tid = tool.find_ours()
    if tid is not None:
        problems.append(f"sys.monitoring tool id {tid} still held by pyprobes")
    if not pyprobes.is_enabled():
        problems.append("the global switch was left off")
    return problems


def _clean() -> None:
    for p in pyprobes.registered_probes():
        registry.unregister(p)
    pyprobes.set_enabled(True)


@pytest.fixture(autouse=True)
def no_probes_left() -> Iterator[None]:
    """Fail a test that starts or ends with probes registered or our tool id held."""
    before = _leftovers()
    if before:
        _clean()
        pytest.fail("a previous test left state behind: " + "; ".join(before))
    yield
    after = _leftovers()
    if after:
        _clean()
        pytest.fail("the test left state behind: " + "; ".join(after))


def pytest_report_header() -> str:
    return f"pyprobes core: {pyprobes.core_name()}; CPython {sys.version.split()[0]}"
