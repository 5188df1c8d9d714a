"""The output package: public names re-exported, and only the stdlib imported."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from pyprobes import output

SOURCE = Path(output.__file__).parent


def test_all_names_exist_and_are_sorted_uniquely() -> None:
    assert len(set(output.__all__)) == len(output.__all__)
    for name in output.__all__:
        assert hasattr(output, name), name


def test_output_imports_only_the_stdlib_and_itself() -> None:
    # (and otlp*.py, which only --otlp imports, the OpenTelemetry SDK: the extra ``otlp``)
    for path in SOURCE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                ok = top in sys.stdlib_module_names or top == "__future__"
                ok = ok or module == "pyprobes.output" or module.startswith("pyprobes.output.")
                ok = ok or (path.name.startswith("otlp") and top == "opentelemetry")
                assert ok, f"{path.name} imports {module}"
