"""Targets for the gdb bootstrap tests: each runs with no agent, in one shape of program.

Every mode prints ``ready PID`` once it runs, calls ``work(n)`` (the probed function) and keeps
``total`` = the sum of ``work(n)`` = ``2 * sum(n)``; it ends when stdin reaches EOF, printing
``done CALLS TOTAL EXPECTED`` (TOTAL == EXPECTED when nothing disturbed it), exit status 0.

``busy``: a flat-out loop in the main thread. ``sleep``: the main thread calls ``work`` and
sleeps 20 ms, over and over (mostly in ``time.sleep``). ``longsleep``: ``time.sleep(600)``.
``recv PATH``: connects to the Unix socket PATH and blocks in ``recv``; each line received is
``work(len(line))``, answered ``ok N`` on stdout. ``threads``: four threads call ``work``
while the main thread waits in ``join()``. ``asyncio``: a TCP server on 127.0.0.1 and 20
client tasks sending it requests as fast as it answers (each request is ``work(i)``).
``fork``: like ``busy`` at a slower pace; a line ``fork`` on stdin forks a child that prints
``child PID`` and runs the same loop from zero; at EOF (stdin is shared) the child prints
``child-done ...`` and the parent, once the child ended, ``child-status STATUS`` and ``done``.
"""

import asyncio
import os
import socket
import sys
import threading
import time
import warnings

# 3.12+ warns at a fork of a multi-threaded process: the test reads stderr, it must stay empty
warnings.filterwarnings("ignore", category=DeprecationWarning)
lock = threading.Lock()
state = {"calls": 0, "total": 0, "expected": 0}
stop = threading.Event()


def work(n):
    return n * 2


def account(n):
    with lock:
        state["calls"] += 1
        state["total"] += work(n)
        state["expected"] += 2 * n


def say(text):
    os.write(1, (text + "\n").encode())


def watch_stdin(on_line=None):
    def run():
        for line in sys.stdin:
            if on_line is not None:
                on_line(line)
        stop.set()

    threading.Thread(target=run, name="stdin", daemon=True).start()


def done(prefix="done"):
    say(f"{prefix} {state['calls']} {state['total']} {state['expected']}")


def loop(step=None):
    i = 0
    while not stop.is_set():
        account(i)
        i += 1
        if step is not None and i % 1000 == 0:
            step(i)


def mode_busy():
    watch_stdin()
    say(f"ready {os.getpid()}")
    loop()


def mode_sleep():
    watch_stdin()
    say(f"ready {os.getpid()}")
    i = 0
    while not stop.is_set():
        account(i)
        i += 1
        time.sleep(0.02)


def mode_longsleep():
    say(f"ready {os.getpid()}")
    time.sleep(600)


def mode_recv(path):
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    say(f"ready {os.getpid()}")
    f = conn.makefile("rb")
    for line in f:  # the main thread is blocked in recv between lines
        n = len(line.strip())
        account(n)
        say(f"ok {n}")
    done()


def mode_threads():
    watch_stdin()
    threads = [threading.Thread(target=loop, name=f"worker-{k}") for k in range(4)]
    for t in threads:
        t.start()
    say(f"ready {os.getpid()}")
    for t in threads:
        t.join()


async def serve_and_load():
    async def handle(reader, writer):
        while line := await reader.readline():
            i = int(line)
            with lock:
                state["calls"] += 1
                state["total"] += work(i)
                state["expected"] += 2 * i
            writer.write(f"{i * 2}\n".encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    bad = []

    async def client(k):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while not stop.is_set():
            writer.write(f"{i}\n".encode())
            await writer.drain()
            if int(await reader.readline()) != 2 * i:
                bad.append(i)
            i += 20
        writer.close()

    say(f"ready {os.getpid()}")
    await asyncio.gather(*(client(k) for k in range(20)))
    server.close()
    await server.wait_closed()
    if bad:
        say(f"bad answers {len(bad)}")


def mode_asyncio():
    watch_stdin()
    asyncio.run(serve_and_load())


def mode_fork():
    forks = []
    watch_stdin(lambda line: forks.append(True) if line.startswith("fork") else None)
    say(f"ready {os.getpid()}")
    role = {"child": 0, "is_child": False}

    def raw_stdin_eof():  # the child: sys.stdin's buffer lock may be held by a lost thread
        while os.read(0, 4096):
            pass
        stop.set()

    def step(i):
        time.sleep(0.005)
        if forks and not role["child"] and not role["is_child"]:
            forks.pop()
            pid = os.fork()
            if pid == 0:
                role["is_child"] = True
                state.update(calls=0, total=0, expected=0)
                threading.Thread(target=raw_stdin_eof, daemon=True).start()
                say(f"child {os.getpid()}")
            else:
                role["child"] = pid

    loop(step)
    if role["is_child"]:
        done("child-done")
        os._exit(0)
    if role["child"]:
        _, status = os.waitpid(role["child"], 0)
        say(f"child-status {status}")


parent = os.getpid()
mode = sys.argv[1]
if mode == "recv":
    mode_recv(sys.argv[2])
else:
    globals()[f"mode_{mode}"]()
    if os.getpid() == parent:
        done()
