import sys
import threading


def work(n, label="w"):
    total = 0
    for i in range(n):
        total += i
    return total


def main():
    results = {}

    def run(k):
        results[k] = work(k * 10, label=f"t{k}")

    threads = [threading.Thread(target=run, args=(k,), name=f"worker-{k}") for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("results", sorted(results.items()))
    print("argv", sys.argv[1:], "name", __name__)


main()
