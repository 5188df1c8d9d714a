"""Build the optional C core, ``pyprobes._speedups`` (metadata lives in pyproject.toml).

The extension is optional, as coverage.py's CTracer is: if it cannot be built (no compiler,
no Python headers), the install still succeeds and pyprobes runs on its pure-Python core,
saying so once. ``PYPROBES_REQUIRE_C=1`` turns a failed build into an error (for CI).

The build also installs ``pyprobes_agent.pth`` into site-packages (see ``build_pth`` below):
the ``PYPROBES_AGENT=1`` start-up hook of the attach agent.
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import Command, Extension, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext


def missing_flags(compiler: object) -> list[str]:
    """What the hot path needs when ``CFLAGS`` in the environment replaced CPython's flags.

    setuptools builds with ``CFLAGS`` instead of the interpreter's ``-O3 -fno-strict-overflow
    ...`` when the variable is set, even empty: without an optimisation level gcc compiles at
    -O0, and the C core runs twice as slow per hit. A level the user chose is kept.
    """
    if getattr(compiler, "compiler_type", "") != "unix":
        return []
    args = [str(a) for a in getattr(compiler, "compiler_so", [])]
    flags = []
    if not any(a.startswith("-O") for a in args):
        flags.append("-O3")
    if not any(a in ("-fno-strict-overflow", "-fstrict-overflow", "-fwrapv") for a in args):
        flags.append("-fno-strict-overflow")  # as CPython compiles its own (and its headers')
    return flags


class OptionalBuildExt(build_ext):
    """build_ext that degrades to the pure-Python core when the C core cannot be built."""

    _failed = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if not self._failed:  # (an in-place build also fails to copy what was not built)
                self._give_up(exc)

    def build_extension(self, ext: Extension) -> None:
        ext.extra_compile_args = [*ext.extra_compile_args, *missing_flags(self.compiler)]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: BaseException) -> None:
        if os.environ.get("PYPROBES_REQUIRE_C") == "1":
            raise exc  # (not marked as given up: run() passes it on)
        self._failed = True
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(
            f"pyprobes: the C core could not be built ({reason}); using the pure-Python core",
            file=sys.stderr,
        )


# --- the attach agent's start-up hook: pyprobes_agent.pth in site-packages -----------------

PTH_NAME = "pyprobes_agent.pth"
PTH_SOURCE = os.path.join("src", "pyprobes", "attach", "autostart.py")


def pth_line() -> str:
    """The hook's one line: ``PTH_LINE`` of pyprobes.attach.autostart, read without importing."""
    import ast

    with open(PTH_SOURCE, encoding="utf-8") as f:
        tree = ast.parse(f.read(), PTH_SOURCE)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PTH_LINE" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, str) and value.startswith("import "):
                return value
    raise RuntimeError(f"no PTH_LINE (a line starting with 'import ') in {PTH_SOURCE}")


class BuildPth(Command):
    """Write pyprobes_agent.pth where it lands in site-packages: the root of the wheel.

    A regular wheel is made of ``build_lib``, so the file goes there. An editable wheel
    (``pip install -e``) takes nothing from ``build_lib``; setuptools points ``install_lib``
    at the editable wheel's root instead (it puts data files there the same way), so in
    editable mode the file goes there.
    """

    description = "write the PYPROBES_AGENT=1 start-up hook (pyprobes_agent.pth)"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False
        self._outputs: list[str] = []

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def run(self) -> None:
        if self.editable_mode:
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        assert target is not None
        self.mkpath(target)
        path = os.path.join(target, PTH_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(pth_line() + "\n")
        self._outputs = [] if self.editable_mode else [path]

    def get_outputs(self) -> list[str]:
        return list(self._outputs)

    def get_source_files(self) -> list[str]:
        return []

    def get_output_mapping(self) -> dict[str, str]:
        return {}


class BuildWithPth(build):
    """``build`` that also runs ``build_pth``."""

    sub_commands = [*build.sub_commands, ("build_pth", None)]


SPEEDUPS = "src/pyprobes/_speedups.c"

setup(
    ext_modules=[
        Extension(
            "pyprobes._speedups",
            sources=[SPEEDUPS],
            # its sections, included by _speedups.c and by one another (one translation unit):
            # a change in any of them rebuilds the extension
            depends=sorted(set(glob.glob("src/pyprobes/_*.c")) - {SPEEDUPS}),
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt, "build": BuildWithPth, "build_pth": BuildPth},
)
