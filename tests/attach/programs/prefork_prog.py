"""A pre-fork server for attach tests: a parent that forks two workers which call ``work``.

``prefork_prog.py fork|mp``: the workers are made by ``os.fork()`` or by ``multiprocessing``
with the ``fork`` start method. The parent prints ``ready PID``; each worker prints
``worker K PID`` once it runs, then calls ``work(i)`` until the parent tells it to stop (EOF
on the parent's stdin), prints ``worker K done`` and exits with status ``10 + K``. The parent
then prints ``exit K STATUS`` for each and ``done``, exit status 0.
"""

import multiprocessing
import os
import select
import sys
import warnings

WORKERS = 2


def work(n):
    return n * 2


def say(text):
    # one write per line: the workers share the pipe, lines must not interleave
    os.write(1, (text + "\n").encode())


def serve(k, should_stop):
    say(f"worker {k} {os.getpid()}")
    total = 0
    i = 0
    while not should_stop():
        total += work(i)
        i += 1
    assert total == i * (i - 1)
    say(f"worker {k} done")


def with_fork():
    stops = []
    pids = []
    for k in range(WORKERS):
        r, w = os.pipe()
        with warnings.catch_warnings():
            # 3.12+ warns of a fork with threads (the agent's); gunicorn's fork is not in
            # __main__, so its users never see it: neither do we
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(w)
            for fd in stops:
                os.close(fd)
            serve(k, lambda r=r: bool(select.select([r], [], [], 0.002)[0]))
            raise SystemExit(10 + k)
        os.close(r)
        stops.append(w)
        pids.append(pid)
    sys.stdin.read()
    for fd in stops:
        os.close(fd)
    for k, pid in enumerate(pids):
        _, status = os.waitpid(pid, 0)
        say(f"exit {k} {os.waitstatus_to_exitcode(status)}")


def mp_worker(k, stop):
    serve(k, lambda: stop.wait(0.002))
    sys.exit(10 + k)


def with_multiprocessing():
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    procs = [ctx.Process(target=mp_worker, args=(k, stop)) for k in range(WORKERS)]
    for p in procs:
        p.start()
    sys.stdin.read()
    stop.set()
    for k, p in enumerate(procs):
        p.join()
        say(f"exit {k} {p.exitcode}")


def main():
    say(f"ready {os.getpid()}")
    if sys.argv[1] == "fork":
        with_fork()
    else:
        with_multiprocessing()
    say("done")


if __name__ == "__main__":
    main()
