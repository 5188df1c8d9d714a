"""A function raises an exception whose __repr__ takes a lock its caller holds (issue 18)."""

import threading

lock = threading.Lock()
reprs = []


class StateError(Exception):
    def __repr__(self) -> str:
        with lock:  # plain Python never calls this here: a probe that does deadlocks
            reprs.append(1)
            return "StateError()"


def update() -> None:
    raise StateError("bad", 3)


def main() -> None:
    with lock:
        try:
            update()
        except StateError:
            pass
    print(1, None, "done", len(reprs))


main()
