#!/usr/bin/env bash
# Soaks the whole table on the local cluster: N consecutive runs (default 20), each a full
# `netpol-conformance run --local` with its own JUnit, stopping early once a time budget is
# spent. Prints per run its wall time, passed / failed / errors / skipped and its flaky pairs
# (wrong at first, right later: recorded, not failures), then the totals; exits non-zero if any
# run failed or had an error, or if the budget ran out before N runs. A flake is a bug to find:
# the JUnit of every run that did not pass stays in the output directory.
#
#   sudo hack/soak-table.sh [--runs N] [--max-minutes M] [--runtime emulated|kubelet] [run args]
#
# Defaults: 20 runs, 40 minutes, emulated nodes. Set-up as hack/run-local.sh does it. The
# JUnit files go to $NETPOL_SOAK_DIR when set, else to a temporary directory that is removed
# on exit unless a run failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'soak-table: %s\n' "$*" >&2; }

# shellcheck source=hack/lib/table-runs.sh
source hack/lib/table-runs.sh

runs=20
max_minutes=40
runtime=emulated
budget_flag() {
  took=0
  case "$1" in
    --max-minutes) max_minutes=${2:?--max-minutes needs a number}; took=2 ;;
    --max-minutes=*) max_minutes=${1#--max-minutes=}; took=1 ;;
  esac
}
parse_table_args budget_flag "$@"
[[ $max_minutes =~ ^[1-9][0-9]*$ ]] ||
  { log "error: --max-minutes wants a positive number, not $max_minutes"; exit 2; }

out=${NETPOL_SOAK_DIR:-$(mktemp -d)}
mkdir -p "$out"
keep=0
cleanup() {
  local status=$?
  stop_table_run
  if [[ -z ${NETPOL_SOAK_DIR:-} && $keep -eq 0 ]]; then
    rm -rf "$out"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

table_setup "$runtime"

# count FILE ATTRIBUTE: an attribute of the JUnit's <testsuites> element.
count() {
  python3 - "$1" "$2" <<'EOF'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
print(root.get(sys.argv[2]) or 0)
EOF
}

# flaky FILE: the number of pairs the run's steps recorded as wrong at first, right later.
flaky() {
  grep -o 'flaky (wrong at first, right later): [^&<]*' "$1" | sed 's/.*: //' | tr ',' '\n' |
    grep -c . || true
}

deadline=$(($(date +%s) + max_minutes * 60))
done_runs=0
bad=0
total_flaky=0
printf '%4s %8s %7s %7s %7s %8s %6s\n' run wall passed failed errors skipped flaky
for ((i = 1; i <= runs; i++)); do
  if (($(date +%s) >= deadline)); then
    log "the ${max_minutes}-minute budget is spent after $done_runs runs"
    break
  fi
  junit="$out/run-$i.xml"
  start=$(date +%s.%N)
  status=0
  "$bin_dir/netpol-conformance" run --local --runtime "$runtime" --junit "$junit" --quiet \
    "${args[@]}" >"$out/run-$i.log" 2>&1 &
  child=$!
  wait "$child" || status=$?
  child=""
  wall=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  done_runs=$i
  if [[ ! -f $junit ]]; then
    printf '%4d %8s %s\n' "$i" "$wall" "no JUnit written (exit $status); log: $out/run-$i.log"
    bad=$((bad + 1))
    keep=1
    continue
  fi
  tests=$(count "$junit" tests)
  failures=$(count "$junit" failures)
  errors=$(count "$junit" errors)
  skipped=$(count "$junit" skipped)
  pairs=$(flaky "$junit")
  total_flaky=$((total_flaky + pairs))
  printf '%4d %8s %7d %7d %7d %8d %6d\n' "$i" "$wall" \
    $((tests - failures - errors - skipped)) "$failures" "$errors" "$skipped" "$pairs"
  if [[ $status -ne 0 || $failures -ne 0 || $errors -ne 0 ]]; then
    bad=$((bad + 1))
    keep=1
    log "run $i did not pass (exit $status); its JUnit and log: $out/run-$i.xml, $out/run-$i.log"
  fi
done
log "$done_runs runs, $bad with a failure or an error, $total_flaky flaky pairs in all"
if [[ $bad -ne 0 ]]; then
  exit 1
fi
if ((done_runs < runs)); then
  log "error: only $done_runs of $runs runs fit in the budget"
  exit 1
fi
