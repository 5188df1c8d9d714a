"""Older Pythons get one clear error on import, not an AttributeError from deep inside."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _python_311() -> str | None:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    for path in sorted(glob.glob(os.path.join(root, "versions", "3.11*", "bin", "python"))):
        return path
    return None


@pytest.mark.skipif(_python_311() is None, reason="no CPython 3.11 here to import pyprobes with")
def test_import_on_311_raises_unsupported_python_error() -> None:
    py = _python_311()
    assert py is not None
    code = (
        "try:\n    import pyprobes\nexcept Exception as e:\n    print(type(e).__name__, '|', e)\n"
    )
    out = subprocess.run(
        [py, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("UnsupportedPythonError | pyprobes needs sys.monitoring")
    assert "3.11" in out.stdout


def test_free_threaded_builds_are_refused_with_one_clear_error() -> None:
    from pyprobes import UnsupportedPythonError
    from pyprobes.engine.tool import check_supported

    check_supported(lambda name: 0)  # the default build: fine
    with pytest.raises(UnsupportedPythonError) as err:
        check_supported(lambda name: 1 if name == "Py_GIL_DISABLED" else 0)
    text = str(err.value)
    assert "free-threaded" in text and "GIL" in text and "\n" not in text
