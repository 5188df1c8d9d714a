"""A long-running program for attach tests.

It prints ``ready PID`` and then calls ``work(i)`` in a loop, printing ``i total`` every 1000
calls (always ``total == i * (i - 1)``). ``--busy`` loops flat out and prints ``rate N`` (calls
in the last 0.2 s) instead. A line on stdin starting with ``fork`` forks a child that prints
``child PID`` and waits; EOF on stdin ends the loop: ``done i total``, exit status 0.
"""

import os
import sys
import threading
import time


def work(n):
    return n * 2


def say(text):
    # one write per line: the forked child shares the pipe, lines must not interleave
    os.write(1, (text + "\n").encode())


def main():
    busy = "--busy" in sys.argv
    stop = threading.Event()
    forks = []

    def commands():
        for line in sys.stdin:
            if line.startswith("fork"):
                forks.append(True)
        stop.set()

    threading.Thread(target=commands, name="commands", daemon=True).start()
    say(f"ready {os.getpid()}")
    total = 0
    i = 0
    window = time.monotonic()
    calls = 0
    while not stop.is_set():
        total += work(i)
        i += 1
        calls += 1
        if forks:
            forks.pop()
            pid = os.fork()
            if pid == 0:
                say(f"child {os.getpid()}")
                time.sleep(600)
                os._exit(0)
        if busy:
            now = time.monotonic()
            if now - window >= 0.2:
                say(f"rate {calls}")
                calls = 0
                window = now
        elif i % 1000 == 0:
            say(f"{i} {total}")
            time.sleep(0.01)
    say(f"done {i} {total}")


main()
