"""A service stand-in for the /metrics tests: on each line of stdin, N calls of work(), then
"done TOTAL" on stdout; it ends on "quit" or end of input. The test decides when it works."""

import sys


def work(i: int) -> int:
    return sum(range(i % 64))


def main() -> None:
    total = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        for i in range(int(cmd)):
            work(i)
        total += int(cmd)
        print("done", total, flush=True)


main()
