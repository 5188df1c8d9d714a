#!/usr/bin/env bash
# Regenerate benchmarks/RESULTS-peers.md: pyprobes against the tools people use today (issue 7).
#   benchmarks/run_peers.sh            every CPython >= 3.12 that `scripts/dev pythons` finds
#   benchmarks/run_peers.sh 3.13       only these versions
#   benchmarks/run_peers.sh --quick    a smoke test (few rounds); writes /tmp/RESULTS-peers-quick.md
# For each version: benchmarks/peers_env.sh makes or refreshes benchmarks/.venv-peers-X.Y (pyprobes
# with `pip install -e .` plus requirements-peers.txt), then, in that environment,
# bench_peers.py (parts 1, 2, 4, one process; the python core again in a child when the C core
# is the default) and bench_tracer.py (part 3, `pyprobes run` subprocesses); peers_report.py
# assembles the JSON of all versions into one Markdown file. About 3 minutes per version.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/RESULTS-peers.md
TMP=${TMPDIR:-/tmp}/pyprobes-peers-json  # the raw numbers, kept: peers_report.py reads them
mkdir -p "$TMP"

quick=()
versions=()
for a in "$@"; do
  case $a in
    --quick) quick=(--quick); OUT=${TMPDIR:-/tmp}/RESULTS-peers-quick.md; TMP=$TMP-quick ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) versions+=("$a") ;;
  esac
done

mkdir -p "$TMP"
rm -f "$TMP"/*.json
ENVS=$(benchmarks/peers_env.sh "${versions[@]}")
status=0
last=""
while read -r ver vpy; do
  [ -z "$ver" ] && continue
  last=$vpy
  echo "== CPython $ver: parts 1, 2, 4 (benchmarks/bench_peers.py)" >&2
  if ! "$vpy" benchmarks/bench_peers.py "${quick[@]}" --json "$TMP/$ver-peers.json"; then
    echo "== bench_peers.py FAILED on CPython $ver" >&2
    status=1
  fi
  echo "== CPython $ver: part 3 (benchmarks/bench_tracer.py)" >&2
  if ! "$vpy" benchmarks/bench_tracer.py "${quick[@]}" --json "$TMP/$ver-tracer.json"; then
    echo "== bench_tracer.py FAILED on CPython $ver" >&2
    status=1
  fi
done <<<"$ENVS"

"$last" benchmarks/peers_report.py "$TMP" --out "$OUT" --command "benchmarks/run_peers.sh${*:+ $*}"
echo "raw numbers: $TMP/*.json" >&2
exit $status
