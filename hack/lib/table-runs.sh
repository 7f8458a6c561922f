#!/usr/bin/env bash
# What the scripts that run the whole table several times (hack/bench-table.sh,
# hack/soak-table.sh) share: the set-up hack/run-local.sh does, and stopping a run that is
# still going when they exit. Source it from the repository root; it sets `bin_dir` and reads
# `child` (the pid of the run in flight, empty when none).

bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/release"
child=""

# table_arg WORDS...: takes `--runs N` and `--runtime R` (also as --flag=value) off the front of
# WORDS into `runs` and `runtime`, setting `took` to the words used (0: not one of them).
# shellcheck disable=SC2034  # runs, runtime and took are the caller's
table_arg() {
  took=0
  case $1 in
    --runs) runs=${2:?--runs needs a number}; took=2 ;;
    --runs=*) runs=${1#--runs=}; took=1 ;;
    --runtime) runtime=${2:?--runtime needs kubelet or emulated}; took=2 ;;
    --runtime=*) runtime=${1#--runtime=}; took=1 ;;
  esac
}

# parse_table_args EXTRA WORDS...: --runs and --runtime into `runs` and `runtime`, the words
# the caller's function EXTRA takes (it sets `took` as table_arg does), every other word into
# `args` for the run; then checks them.
# shellcheck disable=SC2034  # args is the caller's
parse_table_args() {
  local extra=$1
  shift
  args=()
  while [[ $# -gt 0 ]]; do
    table_arg "$@"
    ((took > 0)) || "$extra" "$@"
    if ((took > 0)); then
      shift "$took"
    else
      args+=("$1")
      shift
    fi
  done
  check_table_args
}

# check_table_args: `runs` is a positive number and `runtime` one the local cluster has, or
# the script ends with a usage error.
check_table_args() {
  [[ $runs =~ ^[1-9][0-9]*$ ]] || { log "error: --runs wants a positive number, not $runs"; exit 2; }
  case "$runtime" in
    emulated | kubelet) ;;
    *) log "error: unknown runtime $runtime (kubelet, emulated)"; exit 2 ;;
  esac
}

# table_setup RUNTIME: packages and binaries (hack/setup.sh, the control plane, a release build,
# the real nodes' images for `kubelet`) and the kernel's exemptions, exported.
table_setup() {
  local runtime=$1
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
}

# stop_table_run: interrupts the run in flight (the suite tears its own local cluster down on a
# signal) and takes down a local cluster left behind.
stop_table_run() {
  if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
    kill -INT "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if [[ -x $bin_dir/netpol-conformance ]]; then
    "$bin_dir/netpol-conformance" local down >/dev/null 2>&1 || true
  fi
}
