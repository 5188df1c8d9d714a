"""Issue 17.10: wildcards match nested functions, in real ``pyprobes run`` subprocesses."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS = HERE / "programs"
SRC = str(HERE.parents[1] / "src")

_PROBE = re.compile(r": \(([^()]*)\+0\)$")


def probed(spec: str, script: Path) -> collections.Counter[str]:
    """Hits per probed function of ``pyprobes run -e SPEC script``."""
    run = subprocess.run(
        [sys.executable, "-m", "pyprobes", "run", "-e", spec, str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        cwd=script.parent,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    hits = collections.Counter[str]()
    for line in run.stderr.splitlines():
        m = _PROBE.search(line)
        if m:
            hits[m.group(1)] += 1
    return hits


def test_star_matches_nested_functions_and_methods_of_nested_classes() -> None:
    hits = probed("p __main__:*", PROGRAMS / "nested_prog.py")
    assert hits == {
        "__main__:make": 1,
        "__main__:make.<locals>.inner": 3,
        "__main__:Box.Lid.open": 1,
        "__main__:Box.Lid.open.<locals>.hinge": 1,
        "__main__:Box.get": 1,
    }  # no lambda, no class body


def test_a_dotted_pattern_names_a_level() -> None:
    prog = PROGRAMS / "nested_prog.py"
    assert set(probed("p __main__:Box.*", prog)) == {"__main__:Box.Lid.open", "__main__:Box.get"}
    assert set(probed("p __main__:*.<locals>.*", prog)) == {
        "__main__:make.<locals>.inner",
        "__main__:Box.Lid.open.<locals>.hinge",
    }
    assert set(probed("p __main__:<lambda>", prog)) == {"__main__:<lambda>"}


def test_module_wildcard_sees_the_pure_python_encoders_nested_functions(tmp_path: Path) -> None:
    script = tmp_path / "enc.py"
    script.write_text(  # iterencode without _one_shot: the Python encoder, never the C one
        "import json\n''.join(json.JSONEncoder(indent=2).iterencode({'a': [1, {'b': 2}]}))\n"
    )
    hits = probed("p json.encoder:*", script)
    assert hits["json.encoder:_make_iterencode"] == 1
    assert hits["json.encoder:_make_iterencode.<locals>._iterencode"] == 1
    assert hits["json.encoder:_make_iterencode.<locals>._iterencode_dict"] == 2
    assert hits["json.encoder:_make_iterencode.<locals>._iterencode_list"] == 1
