"""A program whose main thread blocks in a C call, for the sys.remote_exec tests.

``sleep``: prints ``ready PID`` and sleeps 600 s in ``time.sleep``. ``recv PATH``: connects to
the Unix socket PATH, prints ``ready PID`` and blocks in ``recv``; when a line arrives it
prints ``woke LINE`` and then runs Python code (``work(i)`` in a loop, a line every 1000
calls) until stdin reaches EOF: ``done i``.
"""

import os
import socket
import sys
import threading
import time


def work(n):
    return n * 2


def say(text):
    os.write(1, (text + "\n").encode())


def main():
    mode = sys.argv[1]
    if mode == "sleep":
        say(f"ready {os.getpid()}")
        time.sleep(600)
        say("slept")
        return
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sys.argv[2])
    say(f"ready {os.getpid()}")
    data = conn.recv(100)
    say(f"woke {data.decode().strip()}")
    i = 0
    while not stop.is_set():
        work(i)
        i += 1
        if i % 1000 == 0:
            say(f"{i}")
            time.sleep(0.01)
    say(f"done {i}")


main()
