"""The start-up hook: ``PYPROBES_AGENT=1`` starts the agent in any Python process.

pyprobes installs ``pyprobes_agent.pth`` into site-packages; ``site`` runs its one line at
every interpreter start. With the variable unset that line costs one environment look-up;
set to ``1`` it imports this module, which starts the agent (as coverage.py's ``.pth`` starts
measuring subprocesses). Child processes inherit the variable and get agents of their own:
an exec'd one through this hook, a forked one (gunicorn, uwsgi and multiprocessing workers)
because this agent follows forks: each child serves its own socket from right after the fork.
A failure never stops the program: it is one line on stderr.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "PYPROBES_AGENT"
PTH_NAME = "pyprobes_agent.pth"
#: The whole .pth file (setup.py writes it from here); site executes lines that start with import.
PTH_LINE = (
    'import os; os.environ.get("PYPROBES_AGENT") == "1" and __import__("pyprobes.attach.autostart")'
)


def autostart() -> str | None:
    """Start the agent; its socket path, or None (and one line on stderr) if it failed."""
    try:
        from pyprobes.attach.server import start

        return start(follow_fork=True)
    except Exception as exc:
        try:
            sys.stderr.write(f"pyprobes: {ENV_VAR}=1 but the agent did not start: {exc}\n")
        except Exception:
            pass
        return None


if os.environ.get(ENV_VAR) == "1":
    autostart()
