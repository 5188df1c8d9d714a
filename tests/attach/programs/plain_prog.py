"""A single-threaded target that never imports threading (nor anything that does).

It prints ``ready PID`` and calls ``work(i)`` in a loop; between calls it polls stdin with
``select``: a line ``check`` prints ``main-thread True`` when ``threading``'s idea of the main
thread is this, the program's main thread; EOF ends it with ``done CALLS TOTAL EXPECTED``.
"""

import os
import select
import sys


def work(n):
    return n * 2


def main():
    os.write(1, f"ready {os.getpid()}\n".encode())
    calls = total = expected = 0
    while True:
        for _ in range(1000):
            total += work(calls)
            expected += 2 * calls
            calls += 1
        if select.select([0], [], [], 0.002)[0]:
            line = os.read(0, 100)
            if not line:
                break
            if line.startswith(b"check"):
                import threading

                same = threading.main_thread() is threading.current_thread()
                os.write(1, f"main-thread {same} {'threading' in sys.modules}\n".encode())
    os.write(1, f"done {calls} {total} {expected}\n".encode())


main()
