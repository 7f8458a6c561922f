#!/usr/bin/env bash
# The README's test command: set-up, then every test tier that can run on one Linux machine.
#
#   sudo hack/test.sh
#
#   0. set-up: packages, the control-plane and real-node binaries (cached), the node images;
#   1. checks: cargo fmt, cargo clippy -D warnings, shellcheck + actionlint (hack/lint.sh);
#   2. unit tests (no root, no cluster), privileged tests (root, throwaway network namespaces),
#      and the whole conformance table on the local cluster's emulated nodes with the bundled
#      enforcer (`cargo test --workspace`, NETPOL_REQUIRE_LOCAL=1 so nothing skips for want of a
#      cluster; NETPOL_LOCAL_RUNTIME=emulated for this tier);
#   3. the whole table again as the README's run command runs it: on the local cluster's real
#      nodes, its default (kubelet + containerd, the enforcer as its DaemonSet, probes through
#      exec), as a kind cluster would run it;
#   4. a real `sonobuoy run` of the plugin on real nodes, one trial (hack/sonobuoy-local.sh);
#   5. server-side dry-run of every manifest (plugin, RBAC, enforcer DaemonSet) against a local
#      cluster's API server.
# The conformance runs' JUnit lands in target/conformance/junit.xml and junit-real-nodes.xml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "set-up"
# NETPOL_SETUP_NODES=1: also the real-node binaries (kubelet, containerd, …), so the real-node
# tests run on a fresh machine rather than skip.
NETPOL_SETUP_NODES=1 bash hack/setup.sh
NETPOL_CONTROL_PLANE_DIR="$(hack/control-plane.sh)"
export NETPOL_CONTROL_PLANE_DIR

step "checks"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
bash hack/lint.sh

step "build"
cargo build --workspace --all-targets --locked
# The real nodes' images (pause, agnhost, and the project's own from this build's binaries).
NETPOL_RELEASE_DIR="$PWD/target/debug" bash hack/node-images.sh >/dev/null

step "tests: unit, privileged, local cluster (emulated nodes)"
mkdir -p target/conformance
# shellcheck source=hack/kernel-features.sh
source hack/kernel-features.sh
NETPOL_EXEMPT_FEATURES="$(kernel_exemptions)"
export NETPOL_EXEMPT_FEATURES
NETPOL_REQUIRE_LOCAL=1 NETPOL_REQUIRE_BROWSER=1 NETPOL_LOCAL=1 NETPOL_LOCAL_RUNTIME=emulated \
  NETPOL_JUNIT="$PWD/target/conformance/junit.xml" cargo test --workspace --locked --no-fail-fast

step "the whole table on real nodes: kubelet + containerd, the DaemonSet enforcer, exec probes"
# `run --local` with the default runtime: the kube backend exactly as against kind, every feature
# judged; the JUnit must say prober=exec, runtime=kubelet, enforcer=daemonset (tests/real_nodes.rs
# proves a deny trial fails there without the enforcer, through `run --kubeconfig`).
# shellcheck source=hack/lib/real-nodes-table.sh
source hack/lib/real-nodes-table.sh
real_nodes_table ./target/debug/netpol-conformance "$PWD/target/conformance/junit-real-nodes.xml" \
  --all-features

step "Sonobuoy for real: sonobuoy run of the plugin as shipped on real nodes (one trial)"
# sonobuoy's own aggregator and worker, the plugin image as built here, the done file and the
# results tarball; a trial that fails, or a run that judges nothing, fails this step.
sonobuoy_dir="${TMPDIR:-/tmp}/netpol-sonobuoy-check.$$"
sonobuoy_down() {
  NETPOL_LOCAL_DIR="$sonobuoy_dir" NETPOL_LOCAL_INSTANCE=sb ./target/debug/netpol-conformance local down \
    >/dev/null 2>&1 || true
  rm -rf "$sonobuoy_dir"
}
trap sonobuoy_down EXIT
NETPOL_LOCAL_DIR="$sonobuoy_dir" NETPOL_LOCAL_INSTANCE=sb ./target/debug/netpol-conformance local up \
  --runtime kubelet >&2
NETPOL_RELEASE_DIR="$PWD/target/debug" bash hack/sonobuoy-local.sh --state-dir "$sonobuoy_dir" \
  --out "$PWD/target/conformance/sonobuoy" \
  --plugin-env 'netpol-conformance.E2E_FOCUS=^upstream::ingress::default-deny-ingress$'
grep -qx 'Passed: 1' target/conformance/sonobuoy/results.txt ||
  { echo "test: sonobuoy results do not show the one trial passed" >&2; exit 1; }
sonobuoy_down
trap - EXIT

step "manifests: server-side dry-run against the local cluster"
export NETPOL_LOCAL_DIR="${TMPDIR:-/tmp}/netpol-manifest-check.$$"
export NETPOL_LOCAL_INSTANCE=mc
cleanup() { ./target/debug/netpol-conformance local down >/dev/null 2>&1 || true; }
trap cleanup EXIT
# The API server is all a dry-run needs: emulated nodes start fastest.
./target/debug/netpol-conformance local up --no-enforcer --runtime emulated
bash hack/check-manifests.sh "$NETPOL_LOCAL_DIR/kubeconfig"
cleanup
trap - EXIT
step "all tiers passed"
