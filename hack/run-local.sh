#!/usr/bin/env bash
# The README's run command: set-up, then the whole table on the local cluster with the bundled
# enforcer. Extra arguments go to `netpol-conformance run` (a FILTER, --junit FILE, --no-enforcer…).
# What the kernel cannot carry (SCTP here) is exempted explicitly, with the reason printed.
#
#   sudo hack/run-local.sh
#   sudo hack/run-local.sh upstream:: --junit junit.xml
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/setup.sh
NETPOL_CONTROL_PLANE_DIR="$(hack/control-plane.sh)"
export NETPOL_CONTROL_PLANE_DIR
cargo build --release --locked --bin netpol-conformance --bin netpol-enforcer
# shellcheck source=hack/kernel-features.sh
source hack/kernel-features.sh
NETPOL_EXEMPT_FEATURES="${NETPOL_EXEMPT_FEATURES:-$(kernel_exemptions)}"
export NETPOL_EXEMPT_FEATURES
exec ./target/release/netpol-conformance run --local "$@"
