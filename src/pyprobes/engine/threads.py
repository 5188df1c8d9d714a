"""Naming the calling thread without creating anything the program can see."""

from __future__ import annotations

import threading

_get_ident = threading.get_ident


def thread_name() -> str:
    """The name of the calling thread, without ``threading.current_thread()``.

    For a thread that ``threading`` did not start (``_thread``, C code) current_thread()
    makes a ``_DummyThread`` that the program then sees in ``active_count()`` and
    ``enumerate()``: forever on CPython 3.12, until the thread ends on 3.13+. So read
    ``threading._active`` (the same dict current_thread() reads, on every version) and
    name a thread not in it ``Dummy-<native thread id>``, creating nothing. Read each time:
    ``threading`` rebinds ``_active`` in a forked child. The C core's programs read it the
    same way.
    """
    active = getattr(threading, "_active", None)
    if isinstance(active, dict):
        thread = active.get(_get_ident())
        if thread is not None:
            name = getattr(thread, "_name", None)  # the attribute Thread.name returns
            if isinstance(name, str):
                return name
    return f"Dummy-{threading.get_native_id()}"
