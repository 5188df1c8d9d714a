"""``python -m benchmarks.workload [SCALE]``: run the workload, print its checksum and time."""

from __future__ import annotations

import sys
import time

from benchmarks.workload import main

if __name__ == "__main__":
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    t0 = time.perf_counter_ns()
    result = main(scale)
    elapsed = time.perf_counter_ns() - t0
    print(f"checksum {result} elapsed_ns {elapsed}")
