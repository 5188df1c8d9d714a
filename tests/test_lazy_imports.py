"""pyprobes imports lazily (src/pyprobes/__init__.py, engine/__init__.py, engine/api.py):
the probe language, the output layer and the CLI's parser select no dispatch core and load no
C extension; the public names, listed once in engine/api.py, load on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pyprobes
import pyprobes.engine
from pyprobes.engine import api

# What selecting a core loads: the selection itself, either core, the C extension.
CORE_MODULES = (
    "pyprobes._speedups",
    "pyprobes.engine.api",
    "pyprobes.engine.ccore",
    "pyprobes.engine.pycore",
    "pyprobes.engine.registry",
)


def loaded_after(code: str) -> list[str]:
    """The core modules in sys.modules of a fresh interpreter after ``code``."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return [m for m in json.loads(out.stdout.splitlines()[-1]) if m in CORE_MODULES]


@pytest.mark.parametrize(
    "module",
    ["pyprobes", "pyprobes.lang", "pyprobes.output", "pyprobes.cli.main", "pyprobes.engine.errors"],
)
def test_import_selects_no_core(module: str) -> None:
    assert loaded_after(f"import {module}") == []


def test_cli_parser_selects_no_core() -> None:
    code = "from pyprobes.cli.main import build_parser\nbuild_parser().format_help()"
    assert loaded_after(code) == []


def test_first_public_name_selects_the_core() -> None:
    """The laziness is real: the same check sees the core once a public name is used."""
    loaded = loaded_after("import pyprobes\npyprobes.Kprobe")
    assert {"pyprobes.engine.registry", "pyprobes.engine.api"} <= set(loaded)
    loaded = loaded_after("from pyprobes import register_kprobe")
    assert "pyprobes.engine.registry" in loaded


def test_public_names_are_the_engines_listed_once() -> None:
    assert pyprobes.__all__ == [*api.__all__, "__version__"]
    assert pyprobes.engine.__all__ == api.__all__
    assert len(set(api.__all__)) == len(api.__all__)
    for name in api.__all__:
        assert getattr(pyprobes, name) is getattr(api, name) is getattr(pyprobes.engine, name)
    assert set(api.__all__) <= set(dir(pyprobes))


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from pyprobes import *", namespace)
    assert set(pyprobes.__all__) <= set(namespace)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        pyprobes.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        pyprobes.engine.no_such_name  # type: ignore[attr-defined]
