"""Core selection: PYPROBES_CORE picks the dispatch core, the default prefers C, a missing C
core falls back (or fails loudly when asked for), and the listing says which core runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import pyprobes
from pyprobes.engine import core, registry

_SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
HAVE_C = core.c_core_available()
needs_c = pytest.mark.skipif(not HAVE_C, reason="the C core (pyprobes._speedups) is not built")


def run(code: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "PYPROBES_CORE"}
    for k, v in env.items():
        if v is not None:
            full[k] = v
    full["PYTHONPATH"] = _SRC + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


def test_this_process_runs_the_core_it_was_asked_for() -> None:
    want = os.environ.get("PYPROBES_CORE", "").strip().lower()
    expected = want or ("c" if HAVE_C else "python")
    assert pyprobes.core_name() == expected
    assert expected == core.select().NAME


def test_python_core_by_environment() -> None:
    out = run("import pyprobes; print(pyprobes.core_name())", {"PYPROBES_CORE": "python"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"


@needs_c
def test_c_core_by_environment_and_by_default() -> None:
    for env in ("c", None, ""):
        out = run("import pyprobes; print(pyprobes.core_name())", {"PYPROBES_CORE": env})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "c", env


def test_bad_value_fails_loudly() -> None:
    out = run("import pyprobes", {"PYPROBES_CORE": "rust"})
    assert out.returncode != 0
    assert "PYPROBES_CORE='rust' is not a pyprobes core" in out.stderr


_HIDE_C = """
import sys
class _NoC:
    def find_spec(self, name, path=None, target=None):
        if name == "pyprobes._speedups":
            raise ImportError("hidden for the test")
        return None
sys.meta_path.insert(0, _NoC())
"""


def test_missing_c_core_falls_back_to_python() -> None:
    out = run(_HIDE_C + "import pyprobes; print(pyprobes.core_name())", {"PYPROBES_CORE": None})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "python"


def test_missing_c_core_asked_for_fails_loudly() -> None:
    out = run(_HIDE_C + "import pyprobes", {"PYPROBES_CORE": "c"})
    assert out.returncode != 0
    assert "PYPROBES_CORE=c but the C core (pyprobes._speedups) is not available" in out.stderr


def test_select_function() -> None:
    from pyprobes.engine import pycore

    assert core.select("python") is pycore
    assert core.select(" Python ") is pycore
    with pytest.raises(ImportError, match="not a pyprobes core"):
        core.select("fast")
    if HAVE_C:
        from pyprobes.engine import ccore

        assert core.select("c") is ccore
        assert core.select("") is ccore


def target(x: int) -> int:
    return x + 1


def test_listing_header_names_the_core() -> None:
    p = pyprobes.Kprobe(addr=target)
    pyprobes.register_kprobe(p)
    try:
        target(1)
        header = pyprobes.format_probe_list(header=True).splitlines()[0]
        assert header == f"# pyprobes core={pyprobes.core_name()} probes enabled"
        assert p.nhit == 1
    finally:
        pyprobes.unregister_kprobe(p)


@needs_c
def test_c_core_context_and_instance_are_the_public_types() -> None:
    """The C core's context and instance objects are subclasses of the documented types."""
    out = run(
        """
        import pyprobes
        from pyprobes import Kretprobe, KretprobeInstance, ProbeContext
        def target(x): return x + 1
        seen = []
        rp = Kretprobe(addr=target, entry_handler=lambda ri, ctx: seen.extend([ri, ctx]),
                       handler=lambda ri, ctx: seen.append(ctx))
        pyprobes.register_kretprobe(rp)
        target(1)
        pyprobes.unregister_kretprobe(rp)
        print(isinstance(seen[0], KretprobeInstance), isinstance(seen[1], ProbeContext),
              isinstance(seen[2], ProbeContext), type(seen[1]).__module__)
        """,
        {"PYPROBES_CORE": "c"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "pyprobes._speedups"]


@needs_c
def test_counters_are_plain_ints_on_the_c_core() -> None:
    out = run(
        """
        import pyprobes
        def target(x): return x + 1
        p = pyprobes.Kprobe(addr=target)
        assert (p.nhit, p.nmissed, p.nfault) == (0, 0, 0)
        pyprobes.register_kprobe(p)
        for i in range(300):
            target(i)
        assert type(p.nhit) is int and p.nhit == 300, p.nhit
        p.nhit = 5
        target(0)
        assert p.nhit == 6
        pyprobes.unregister_kprobe(p)
        try:
            p.nhit = "x"
        except TypeError:
            print("ok")
        """,
        {"PYPROBES_CORE": "c"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_use_core_is_refused_while_a_probe_is_registered() -> None:
    p = pyprobes.Kprobe(addr=target)
    pyprobes.register_kprobe(p)
    try:
        with pytest.raises(pyprobes.ProbeError) as info:
            registry.use_core("python")
        assert str(info.value) == (
            f"cannot switch to the 'python' core while 1 probe(s) are registered on the"
            f" {pyprobes.core_name()!r} core; unregister them first"
        )
        target(1)
        assert p.nhit == 1  # still armed, on the core it was registered with
    finally:
        pyprobes.unregister_kprobe(p)


def test_use_core_switches_when_nothing_is_registered() -> None:
    before = pyprobes.core_name()
    other = "python" if before == "c" else ("c" if HAVE_C else "python")
    assert registry.use_core(other) == before
    try:
        assert pyprobes.core_name() == other
        p = pyprobes.Kprobe(addr=target)
        pyprobes.register_kprobe(p)
        target(1)
        pyprobes.unregister_kprobe(p)
        assert p.nhit == 1
        with pytest.raises(ImportError, match="not a pyprobes core"):
            registry.use_core("rust")
        with pytest.raises(ImportError, match="needs a core name"):
            registry.use_core("")
        assert pyprobes.core_name() == other
    finally:
        assert registry.use_core(before) == other
    assert pyprobes.core_name() == before


@pytest.mark.parametrize("name", ["python", "c"])
def test_a_core_loads_without_the_other(name: str) -> None:
    """Each core imports the shared cold state, never the other core (nor, for the Python
    core on 3.13+, the C extension: on 3.12 ``context.read_local`` uses its ``frame_var``,
    a function no probe reaches, because 3.12's ``frame.f_locals`` changes the program's
    ``locals()``)."""
    if name == "c" and not HAVE_C:
        pytest.skip("the C core (pyprobes._speedups) is not built")
    out = run(
        """
        import sys, pyprobes
        print(pyprobes.core_name(), *sorted(
            m for m in sys.modules
            if m in ("pyprobes.engine.pycore", "pyprobes.engine.ccore", "pyprobes._speedups")))
        """,
        {"PYPROBES_CORE": name},
    )
    assert out.returncode == 0, out.stderr
    if name == "c":
        assert out.stdout.split() == ["c", "pyprobes._speedups", "pyprobes.engine.ccore"]
    else:
        loaded = out.stdout.split()
        if sys.version_info < (3, 13) and "pyprobes._speedups" in loaded:
            loaded.remove("pyprobes._speedups")
        assert loaded == ["python", "pyprobes.engine.pycore"]
