#!/usr/bin/env bash
# Benchmarks the whole table on the local cluster (issue 15): runs it N times, each with
# --junit, and prints per run the wall time, the floor (the deny steps' connect timeouts over
# the trial concurrency, plus the measured world set-up), wall/floor, probes per second and
# where the time went (world set-up, pre-flight, apply, settle, probing, teardown), then the
# median over runs (hack/bench/junit-breakdown.py reads the JUnit files).
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

runs=5
runtime=emulated
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --runs=*) runs=${1#--runs=}; shift ;;
    --runtime) runtime=${2:?--runtime needs kubelet or emulated}; shift 2 ;;
    --runtime=*) runtime=${1#--runtime=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || { log "error: --runs wants a positive number, not $runs"; exit 2; }
case "$runtime" in
  emulated | kubelet) ;;
  *) log "error: unknown runtime $runtime (kubelet, emulated)"; exit 2 ;;
esac

if [[ -n ${NETPOL_BENCH_DIR:-} ]]; then
  out=$NETPOL_BENCH_DIR
  mkdir -p "$out"
else
  out="$(mktemp -d)"
fi
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/release"
child=""
cleanup() {
  local status=$?
  if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
    # The suite tears its own local cluster down on a signal.
    kill -INT "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if [[ -x $bin_dir/netpol-conformance ]]; then
    "$bin_dir/netpol-conformance" local down >/dev/null 2>&1 || true
  fi
  [[ -n ${NETPOL_BENCH_DIR:-} ]] || rm -rf "$out"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $runtime == kubelet ]]; then
  NETPOL_SETUP_NODES=1 bash hack/setup.sh
else
  bash hack/setup.sh
fi
if [[ -z ${NETPOL_CONTROL_PLANE_DIR:-} ]]; then
  NETPOL_CONTROL_PLANE_DIR="$(hack/control-plane.sh)"
fi
export NETPOL_CONTROL_PLANE_DIR
nice cargo build --release --locked --bin netpol-conformance --bin netpol-enforcer
if [[ $runtime == kubelet ]]; then
  NETPOL_RELEASE_DIR="$bin_dir" bash hack/node-images.sh >/dev/null
fi
# shellcheck source=hack/kernel-features.sh
source hack/kernel-features.sh
NETPOL_EXEMPT_FEATURES="${NETPOL_EXEMPT_FEATURES:-$(kernel_exemptions)}"
export NETPOL_EXEMPT_FEATURES

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
