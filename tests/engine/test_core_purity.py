"""The Python core is the reference only if it runs pure: with PYPROBES_CORE=python no C
descriptor and no ``pyprobes._speedups`` object is reachable from a probe (its classes through
the MRO, its instance dict, its counters, its return-probe pool), even once the C core module
was imported by another test, as happens in one pytest run of the whole suite."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import types
from typing import Any

import pytest

import pyprobes
from pyprobes.engine import core

_SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


def c_objects_reachable(probe: object) -> list[str]:
    """What of ``pyprobes._speedups`` can be reached from ``probe``: the attributes of its
    classes and what its instance holds, followed through containers and pyprobes objects (not
    into functions, modules or code, which reach everything)."""
    found: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[object, str]] = []
    for cls in type(probe).__mro__:
        for name, value in vars(cls).items():
            stack.append((value, f"{cls.__name__}.{name}"))
    stack.append((probe, "probe"))
    while stack:
        obj, where = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        t = type(obj)
        if t.__module__.startswith("pyprobes._speedups") or (
            isinstance(obj, type) and obj.__module__.startswith("pyprobes._speedups")
        ):
            found.append(f"{where}: {t.__module__}.{t.__qualname__}")
            continue
        if isinstance(obj, types.ModuleType | types.FunctionType | types.CodeType | type):
            continue
        if isinstance(obj, property):
            for f in (obj.fget, obj.fset, obj.fdel):
                if f is not None and not isinstance(f, types.FunctionType):
                    stack.append((f, f"{where} (accessor)"))
            continue
        if isinstance(obj, dict | list | tuple | set | frozenset) or t.__module__.startswith(
            "pyprobes"
        ):
            for i, ref in enumerate(gc.get_referents(obj)):
                stack.append((ref, f"{where}/{type(ref).__name__}#{i}"))
    return found


def _hit_every_kind() -> list[Any]:
    """Register one probe of each kind (handlers set after registration too), hit them and
    unregister them; return the probes."""

    def target(a: int, b: int = 1) -> int:
        c = a + b
        return c

    k = pyprobes.Kprobe(addr=target, pre_handler=lambda p, ctx: None)
    kl = pyprobes.Kprobe(
        addr=target,
        line=target.__code__.co_firstlineno + 2,
        pre_handler=lambda p, ctx: None,
        post_handler=lambda p, ctx, flags: None,
    )
    j = pyprobes.Jprobe(entry=lambda a, b=1: None, addr=target)
    r = pyprobes.Kretprobe(addr=target, handler=lambda ri, ctx: None)
    probes: list[Any] = [k, kl, j, r]
    pyprobes.register_kprobes([k, kl])
    pyprobes.register_jprobe(j)
    pyprobes.register_kretprobe(r)
    try:
        target(1)
        k.pre_handler = lambda p, ctx: None
        r.entry_handler = lambda ri, ctx: None
        target(2)
        assert [p.nhit for p in probes] == [2, 2, 2, 2]
        for p in probes:  # while registered: the core's state is attached now
            assert not c_objects_reachable(p), (p, c_objects_reachable(p))
    finally:
        pyprobes.unregister_kprobes([k, kl])
        pyprobes.unregister_jprobe(j)
        pyprobes.unregister_kretprobe(r)
    return probes


@pytest.mark.skipif(
    pyprobes.core_name() != "python", reason="this run's core is C (the subprocess test checks)"
)
def test_python_core_run_reaches_no_c_object_even_after_ccore_was_imported() -> None:
    if core.c_core_available():
        import pyprobes.engine.ccore  # noqa: F401  (as test_core_c.py does, earlier in a run)
    for p in _hit_every_kind():
        assert not c_objects_reachable(p), (p, c_objects_reachable(p))
        assert all(type(n) is int for n in (p.nhit, p.nmissed, p.nfault))


def test_python_core_process_reaches_no_c_object_after_importing_ccore() -> None:
    """The same, in a process of its own on the Python core (whatever this run's core)."""
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from pyprobes.engine import core
        if core.c_core_available():
            import pyprobes.engine.ccore
        import pyprobes
        assert pyprobes.core_name() == "python"
        import test_core_purity as t
        for p in t._hit_every_kind():
            assert not t.c_objects_reachable(p), (p, t.c_objects_reachable(p))
        print("pure")
        """
    )
    env = dict(os.environ, PYPROBES_CORE="python")
    env["PYTHONPATH"] = _SRC + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pure"


@pytest.mark.skipif(not core.c_core_available(), reason="the C core is not built")
def test_the_walk_finds_the_c_core_state_of_a_probe_registered_there() -> None:
    """The walk above can fail: in a C-core process it finds what that core attached."""
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        import pyprobes
        import test_core_purity as t
        def target(x): return x
        p = pyprobes.Kprobe(addr=target, pre_handler=lambda p, ctx: None)
        pyprobes.register_kprobe(p)
        target(1)
        found = t.c_objects_reachable(p)
        pyprobes.unregister_kprobe(p)
        print(len(found) > 0, p.nhit)
        """
    )
    env = dict(os.environ, PYPROBES_CORE="c")
    env["PYTHONPATH"] = _SRC + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1"]
