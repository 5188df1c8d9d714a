#!/usr/bin/env bash
# Run engine tests on the C core under valgrind memcheck and count what matters:
# "definitely lost" blocks whose allocation stack goes through pyprobes._speedups, and invalid
# reads/writes (anywhere, and through _speedups). Both must be 0 through _speedups.
# Not counted as ours: blocks allocated inside the module's initialisation (PyInit__speedups,
# its exec slot) by CPython's own module setup (names it interns, which CPython never frees),
# reported on their own line. CPython itself
# leaves "definitely lost" blocks at exit (compare: MEMCHECK_CORE=python lab/memcheck.sh), and
# valgrind flags glibc's AVX2 wmemcmp reading past a string end (a known false positive).
#   lab/memcheck.sh [pytest args]        default: tests/engine, without the RSS test
#   PYTHON=/path/to/python lab/memcheck.sh   (default: python3; it must have pytest and a
#                                            built pyprobes._speedups)
# PYTHONMALLOC=malloc makes every Python allocation visible to valgrind. Takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${MEMCHECK_LOG:-$(mktemp /tmp/pyprobes-memcheck.XXXXXX.log)}
if [ $# -eq 0 ]; then
  set -- tests/engine --deselect tests/engine/test_core_memory.py
fi
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 2; }
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c 'import pyprobes._speedups' \
  || { echo "error: pyprobes._speedups is not built for $PY" >&2; exit 2; }
echo "== valgrind memcheck: $PY -m pytest $* (log: $LOG)" >&2
set +e
PYTHONMALLOC=malloc PYPROBES_CORE=${MEMCHECK_CORE:-c} PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" \
  valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
  --num-callers=50 --log-file="$LOG" \
  "$PY" -m pytest -q -p no:cacheprovider "$@"
test_status=$?
set -e
"$PY" - "$LOG" "$test_status" <<'PYEOF'
import re, sys

log, test_status = sys.argv[1], int(sys.argv[2])
records, cur = [], []
for line in open(log, errors="replace"):
    m = re.match(r"==\d+== ?(.*)", line.rstrip("\n"))
    if not m:
        continue
    text = m.group(1)
    if not text.strip():
        if cur:
            records.append(cur)
        cur = []
    else:
        cur.append(text)
if cur:
    records.append(cur)

# our frames: any file of the C core (_speedups.c and the sections it includes)
OURS = re.compile(r"\((_[a-z]+)\.c:\d+\)")
SECTIONS = {p.stem for p in __import__("pathlib").Path("src/pyprobes").glob("_*.c")}
INIT = ("PyInit__speedups", "speedups_exec", "init_statics", "prog_module_init")

def frames(rec):
    return [l for l in rec[1:] if (m := OURS.search(l)) and m.group(1) in SECTIONS]

def init_only(rec):
    fs = frames(rec)
    return bool(fs) and all(any(f" {name} (" in l for name in INIT) for l in fs)

def ours(rec):
    return bool(frames(rec)) and not init_only(rec)

invalid = [r for r in records if re.match(r"Invalid (read|write)", r[0])]
lost = [r for r in records if "definitely lost" in r[0]]
lost_bytes = lambda rs: sum(int(re.search(r"([\d,]+) bytes", r[0]).group(1).replace(",", "")) for r in rs)
summary = [l for r in records for l in r if "ERROR SUMMARY" in l or "definitely lost:" in l]
print(f"tests exit status: {test_status}")
print(f"invalid reads/writes: {len(invalid)} (through _speedups: {sum(map(ours, invalid))})")
print(f"definitely lost: {len(lost)} records, {lost_bytes(lost)} bytes in all;"
      f" through _speedups: {sum(map(ours, lost))} records,"
      f" {lost_bytes([r for r in lost if ours(r)])} bytes")
init = [r for r in lost if init_only(r)]
print(f"  (CPython's module setup inside the module's initialisation: {len(init)} records,"
      f" {lost_bytes(init)} bytes, not counted)")
for l in summary:
    print("valgrind:", l.strip())
for r in [r for r in invalid + lost if ours(r)][:5]:
    print("\n".join(r[:25]), "\n")
bad = any(ours(r) for r in lost) or any(ours(r) for r in invalid)
sys.exit(1 if bad or test_status else 0)
PYEOF
