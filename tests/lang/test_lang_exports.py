"""The public names of pyprobes.lang are exported, and are the objects of their home modules."""

from __future__ import annotations

import pyprobes.lang
from pyprobes.lang import capture, model, parser, target, vocab
from pyprobes.lang import filter as filter_module


def test_all_names_exist() -> None:
    for name in pyprobes.lang.__all__:
        assert hasattr(pyprobes.lang, name), name
    assert len(set(pyprobes.lang.__all__)) == len(pyprobes.lang.__all__)


def test_exports_are_the_implementations() -> None:
    assert pyprobes.lang.parse_spec is parser.parse_spec
    assert pyprobes.lang.parse_spec_file is parser.parse_spec_file
    assert pyprobes.lang.ProbeSpec is model.ProbeSpec
    assert pyprobes.lang.Target is model.Target
    assert pyprobes.lang.FetchArg is model.FetchArg
    assert pyprobes.lang.Filter is filter_module.Filter
    assert pyprobes.lang.fetch_and_render is capture.fetch_and_render
    assert pyprobes.lang.default_event is target.default_event
    assert pyprobes.lang.TYPES == vocab.TYPES == ("repr", "str", "int", "float", "len", "type")


def test_spec_imports_nothing_of_the_engine_but_errors_programs_and_reads() -> None:
    """The language compiles into the engine's program data (engine.program), and its fetch
    paths read as programs read (engine.reads): those and the errors are all it takes from
    below."""
    import ast
    import pathlib

    package = pathlib.Path(pyprobes.lang.__file__).parent
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


def test_the_former_name_is_an_alias() -> None:
    """``pyprobes.spec`` (the package's name before it was ``pyprobes.lang``) still imports,
    submodules too, and gives the very same objects."""
    import importlib

    import pyprobes.lang
    import pyprobes.lang.filter
    import pyprobes.spec

    assert pyprobes.spec.parse_spec is pyprobes.lang.parse_spec
    assert importlib.import_module("pyprobes.spec.filter") is pyprobes.lang.filter
    assert importlib.import_module("pyprobes.spec.capture").render is pyprobes.lang.render
    assert sorted(pyprobes.spec.__all__) == sorted(pyprobes.lang.__all__)
