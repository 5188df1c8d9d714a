#!/usr/bin/env bash
# Make (or refresh) the peer benchmark environments: benchmarks/.venv-peers-X.Y for every
# CPython >= 3.12 that `scripts/dev pythons` finds, each with pyprobes installed from this
# repository (`pip install -e .`, so that a C core builds when the tree has one) and the peers
# of benchmarks/requirements-peers.txt. Prints one "VERSION VENV_PYTHON" line per environment
# on stdout (progress on stderr).
#   benchmarks/peers_env.sh            every interpreter found
#   benchmarks/peers_env.sh 3.13       only these versions
# Each peer is installed on its own: one that fails to install is written to
# .venv-peers-X.Y/peers-status.txt as "NAME<TAB>failed: REASON" (pip's last error line) and the
# benchmark reports it as not available, with that reason. pyprobes is reinstalled when
# pyproject.toml, setup.py or a C source under src/ changes; the venv is rebuilt when
# requirements-peers.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQS=benchmarks/requirements-peers.txt

want=" $* "
pip_q() { "$@" -q --disable-pip-version-check; }

core_stamp() {
  { cat pyproject.toml setup.py 2>/dev/null; find src -name '*.c' -o -name '*.h' 2>/dev/null |
      sort | xargs -r cat; } | sha1sum | cut -c1-12
}

setup_one() {  # $1 = version, $2 = interpreter
  local ver=$1 py=$2 venv="$ROOT/benchmarks/.venv-peers-$1"
  local pstamp cstamp
  pstamp=$(sha1sum "$REQS" | cut -c1-12)
  cstamp=$(core_stamp)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.peers-stamp" 2>/dev/null)" != "$pstamp" ]; then
    echo "== creating $venv ($("$py" -V 2>&1))" >&2
    rm -rf "$venv"
    "$py" -m venv "$venv" >&2
    pip_q "$venv/bin/python" -m pip install --upgrade pip >&2 || true
    : >"$venv/peers-status.txt"
    local line name log
    while IFS= read -r line; do
      line=${line%%#*}
      line=$(echo "$line" | xargs)
      [ -z "$line" ] && continue
      name=${line%%[=<>!~ ]*}
      log="$venv/pip-$name.log"
      echo "== $ver: pip install $line" >&2
      if "$venv/bin/python" -m pip install --disable-pip-version-check "$line" >"$log" 2>&1; then
        printf '%s\tok\n' "$name" >>"$venv/peers-status.txt"
      else
        reason=$(grep -E '^(ERROR|error)' "$log" | tail -n1 | tr '\t' ' ')
        printf '%s\tfailed: %s\n' "$name" "${reason:-pip exited non-zero (see $log)}" \
          >>"$venv/peers-status.txt"
        echo "== $ver: $name did not install: ${reason:-see $log}" >&2
      fi
    done <"$REQS"
    echo "$pstamp" >"$venv/.peers-stamp"
    rm -f "$venv/.core-stamp"
  fi
  if [ "$(cat "$venv/.core-stamp" 2>/dev/null)" != "$cstamp" ]; then
    echo "== $ver: pip install -e . (pyprobes from $ROOT; builds the C core if the tree has one)" >&2
    if "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps -e "$ROOT" \
        >"$venv/pip-pyprobes.log" 2>&1; then
      echo "$cstamp" >"$venv/.core-stamp"
    else
      # Keep going with what is installed (the benchmark reports which core it runs).
      echo "== $ver: WARNING: pip install -e . failed (see $venv/pip-pyprobes.log):" \
        "$(grep -E '^(ERROR|error)' "$venv/pip-pyprobes.log" | tail -n1)" >&2
      if ! "$venv/bin/python" -c 'import pyprobes' 2>/dev/null; then
        echo "error: pyprobes does not import in $venv" >&2
        exit 1
      fi
    fi
  fi
  echo "$ver $venv/bin/python"
}

found=0
while read -r ver py; do
  [ -z "$ver" ] && continue
  if [ -n "${*}" ] && [[ "$want" != *" $ver "* ]]; then continue; fi
  setup_one "$ver" "$py"
  found=1
done < <(scripts/dev pythons | sort -V)
if [ $found = 0 ]; then
  echo "error: no interpreter matched (scripts/dev pythons found: $(scripts/dev pythons | cut -d' ' -f1 | xargs))" >&2
  exit 1
fi
