"""The public names of pyprobes.spec are exported, and are the objects of their home modules."""

from __future__ import annotations

import pyprobes.spec
from pyprobes.spec import capture, model, parser, target, vocab
from pyprobes.spec import filter as filter_module


def test_all_names_exist() -> None:
    for name in pyprobes.spec.__all__:
        assert hasattr(pyprobes.spec, name), name
    assert len(set(pyprobes.spec.__all__)) == len(pyprobes.spec.__all__)


def test_exports_are_the_implementations() -> None:
    assert pyprobes.spec.parse_spec is parser.parse_spec
    assert pyprobes.spec.parse_spec_file is parser.parse_spec_file
    assert pyprobes.spec.ProbeSpec is model.ProbeSpec
    assert pyprobes.spec.Target is model.Target
    assert pyprobes.spec.FetchArg is model.FetchArg
    assert pyprobes.spec.Filter is filter_module.Filter
    assert pyprobes.spec.fetch_and_render is capture.fetch_and_render
    assert pyprobes.spec.default_event is target.default_event
    assert pyprobes.spec.TYPES == vocab.TYPES == ("repr", "str", "int", "float", "len", "type")


def test_spec_imports_nothing_of_the_engine_but_errors_programs_and_reads() -> None:
    """The language compiles into the engine's program data (engine.program), and its fetch
    paths read as programs read (engine.reads): those and the errors are all it takes from
    below."""
    import ast
    import pathlib

    package = pathlib.Path(pyprobes.spec.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                allowed = (
                    "pyprobes.engine.errors",
                    "pyprobes.engine.program",
                    "pyprobes.engine.reads",
                )
                assert node.module in allowed or not node.module.startswith(
                    ("pyprobes.engine", "pyprobes.output", "pyprobes.cli")
                ), source.name
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pyprobes.")]
                assert names in ([], ["pyprobes.engine.program"]), source.name


def test_models_are_frozen_with_slots() -> None:
    for cls in (model.ProbeSpec, model.Target, model.FetchArg, model.Root, model.Attr, model.Index):
        assert "__slots__" in vars(cls), cls
        assert getattr(cls, "__dataclass_params__").frozen, cls  # noqa: B009
