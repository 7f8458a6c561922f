#!/usr/bin/env bash
# The README's run command: set-up, then the whole table on the local cluster with the bundled
# enforcer. Extra arguments go to `netpol-conformance run` (a FILTER, --junit FILE, --no-enforcer…).
# What the kernel cannot carry (SCTP here) is exempted explicitly, with the reason printed.
#
#   sudo hack/run-local.sh
#   sudo hack/run-local.sh upstream:: --junit junit.xml
#   sudo hack/run-local.sh --runtime emulated [run args]
#
# The local cluster runs on real nodes (kubelet + containerd + runc + kube-proxy per node, the
# enforcer as the enforcer/deploy/ DaemonSet, probes through exec into agnhost pods: the code
# path of any other cluster); this sets up the node binaries and images too.
# --runtime emulated: on emulated nodes instead (node agents, pods as network namespaces, one
# enforcer process per node): faster, for iterating on a change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runtime=kubelet
if [[ ${1:-} == --runtime ]]; then
  runtime=${2:?--runtime needs kubelet or emulated}
  shift 2
elif [[ ${1:-} == --runtime=* ]]; then
  runtime=${1#--runtime=}
  shift
fi
case "$runtime" in
  emulated) bash hack/setup.sh ;;
  kubelet) NETPOL_SETUP_NODES=1 bash hack/setup.sh ;;
  *) echo "run-local: unknown runtime $runtime (kubelet, emulated)" >&2; exit 2 ;;
esac
NETPOL_CONTROL_PLANE_DIR="$(hack/control-plane.sh)"
export NETPOL_CONTROL_PLANE_DIR
cargo build --release --locked --bin netpol-conformance --bin netpol-enforcer
if [[ $runtime == kubelet ]]; then
  # The nodes' images carry the binaries just built.
  NETPOL_RELEASE_DIR="$PWD/target/release" bash hack/node-images.sh >/dev/null
fi
# shellcheck source=hack/kernel-features.sh
source hack/kernel-features.sh
NETPOL_EXEMPT_FEATURES="${NETPOL_EXEMPT_FEATURES:-$(kernel_exemptions)}"
export NETPOL_EXEMPT_FEATURES
exec ./target/release/netpol-conformance run --local --runtime "$runtime" "$@"
