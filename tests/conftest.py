"""Every test starts and ends with no probe registered and our sys.monitoring tool id free."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

import pyprobes
from pyprobes.engine import tool


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
        pyprobes.engine.registry.unregister(p)
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
