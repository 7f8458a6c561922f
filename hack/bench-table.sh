#!/usr/bin/env bash
# Benchmarks the whole table on the local cluster: runs it N times, each with --junit, and
# prints per run the wall time, the floor (the cluster's bring-up plus the larger of the chain
# of trials that take turns and the whole table over the concurrency, each trial counting its
# world set-up and one connect timeout per deny group; hack/bench/junit-breakdown.py says it
# in full), wall/floor, probes per second, where the time went (world set-up, pre-flight,
# apply, settle, probing, teardown) and the enforcement latency, then the median over runs.
#
#   sudo hack/bench-table.sh [--runs N] [--runtime emulated|kubelet] [run args]
#
# Defaults: 5 runs, emulated nodes. Extra arguments go to `netpol-conformance run`
# (a FILTER, --test-threads N, --probe-timeout …). Exits non-zero if any run fails; the JUnit
# files stay in $NETPOL_BENCH_DIR when it is set, else in a temporary directory removed on exit.
# Set-up as hack/run-local.sh does it (set-up script, control plane, release build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'bench-table: %s\n' "$*" >&2; }

# shellcheck source=hack/lib/table-runs.sh
source hack/lib/table-runs.sh

runs=5
runtime=emulated
no_other_flag() { took=0; }
parse_table_args no_other_flag "$@"

if [[ -n ${NETPOL_BENCH_DIR:-} ]]; then
  out=$NETPOL_BENCH_DIR
  mkdir -p "$out"
else
  out="$(mktemp -d)"
fi
cleanup() {
  local status=$?
  stop_table_run
  [[ -n ${NETPOL_BENCH_DIR:-} ]] || rm -rf "$out"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

table_setup "$runtime"

results=()
failed=0
for ((i = 1; i <= runs; i++)); do
  junit="$out/run-$i.xml"
  log "run $i of $runs: netpol-conformance run --local --runtime $runtime --junit $junit ${args[*]}"
  start=$(date +%s.%N)
  "$bin_dir/netpol-conformance" run --local --runtime "$runtime" --junit "$junit" "${args[@]}" \
    >"$out/run-$i.log" 2>&1 &
  child=$!
  status=0
  wait "$child" || status=$?
  child=""
  end=$(date +%s.%N)
  wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }')
  tail -n 3 "$out/run-$i.log" >&2
  if [[ $status -ne 0 ]]; then
    log "run $i failed (exit $status); its log: $out/run-$i.log"
    failed=1
  fi
  if [[ -f $junit ]]; then
    results+=("$junit=$wall")
  fi
done
if [[ ${#results[@]} -gt 0 ]]; then
  python3 hack/bench/junit-breakdown.py "${results[@]}" || failed=1
fi
if [[ $failed -ne 0 ]]; then
  log "error: a run failed (above)"
  exit 1
fi
