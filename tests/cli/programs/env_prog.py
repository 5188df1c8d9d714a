import os
import sys

line = sys.stdin.readline().strip()
print("argv", sys.argv)
print("path0", sys.path[0])
print("file", os.path.basename(__file__), "name", __name__, "spec", __spec__)
print("stdin", line)
