#!/usr/bin/env bash
# The README's run command: set-up, then the whole table on the local cluster with the bundled
# enforcer. Extra arguments go to `netpol-conformance run` (a FILTER, --junit FILE, --no-enforcer…).
# What the kernel cannot carry (SCTP here) is exempted explicitly, with the reason printed.
#
#   sudo hack/run-local.sh
#   sudo hack/run-local.sh upstream:: --junit junit.xml
#   sudo hack/run-local.sh --runtime kubelet [--junit FILE] [run args]
#
# --runtime kubelet: on real nodes instead of the emulated ones (kubelet + containerd + runc per
# node, the enforcer as the enforcer/deploy/ DaemonSet, probes through exec into agnhost pods:
# the code path of any other cluster); also sets up the node binaries and images. Every
# experimental feature is judged there, as on the emulated cluster. NETPOL_UP_ARGS=--no-enforcer
# leaves the DaemonSet out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runtime=emulated
if [[ ${1:-} == --runtime ]]; then
  runtime=${2:?--runtime needs emulated or kubelet}
  shift 2
fi
case "$runtime" in
  emulated) bash hack/setup.sh ;;
  kubelet) NETPOL_SETUP_NODES=1 bash hack/setup.sh ;;
  *) echo "run-local: unknown runtime $runtime (emulated, kubelet)" >&2; exit 2 ;;
esac
NETPOL_CONTROL_PLANE_DIR="$(hack/control-plane.sh)"
export NETPOL_CONTROL_PLANE_DIR
cargo build --release --locked --bin netpol-conformance --bin netpol-enforcer
# shellcheck source=hack/kernel-features.sh
source hack/kernel-features.sh
NETPOL_EXEMPT_FEATURES="${NETPOL_EXEMPT_FEATURES:-$(kernel_exemptions)}"
export NETPOL_EXEMPT_FEATURES
if [[ $runtime == emulated ]]; then
  exec ./target/release/netpol-conformance run --local "$@"
fi
NETPOL_RELEASE_DIR="$PWD/target/release" bash hack/node-images.sh >/dev/null
junit=""
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --junit) junit=${2:?--junit needs a file}; shift 2 ;;
    --junit=*) junit=${1#--junit=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
keep_junit=1
if [[ -z $junit ]]; then
  junit="$(mktemp "${TMPDIR:-/tmp}/netpol-real-nodes-junit.XXXXXX")"
  keep_junit=0
fi
# shellcheck source=hack/lib/real-nodes-table.sh
source hack/lib/real-nodes-table.sh
status=0
real_nodes_table ./target/release/netpol-conformance "$junit" --all-features "${args[@]}" || status=$?
[[ $keep_junit -eq 1 ]] || rm -f "$junit"
exit "$status"
