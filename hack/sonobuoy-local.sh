#!/usr/bin/env bash
# Run the suite's Sonobuoy plugin under a real `sonobuoy run` on the local cluster's real nodes,
# exactly as a user would on theirs, and print what `sonobuoy results` says.
#
#   hack/sonobuoy-local.sh --build-only          # build sonobuoy and its image once, print the CLI
#   hack/sonobuoy-local.sh --state-dir D --out DIR [--plugin-env NAME=VALUE]... [--wait MINUTES]
#
# D is the state directory of a cluster from `netpol-conformance local up --runtime kubelet`
# (NETPOL_LOCAL_DIR; default /run/netpol-conformance/local): D/kubeconfig is used, and every
# node's containerd (D/**/root/run/containerd/containerd.sock) gets the sonobuoy image and the
# plugin's image as hack/node-images.sh builds it now.
#
# Build: the sonobuoy CLI from github.com/vmware-tanzu/sonobuoy at $NETPOL_SONOBUOY_VERSION
# (default: the kind workflow's SONOBUOY_VERSION), its version stamped as upstream's Makefile
# does (pkg/buildinfo.Version), cached in
# ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/upstream/sonobuoy-<version>;
# its aggregator/worker image sonobuoy/sonobuoy:<version> is that binary alone
# (hack/node-images.sh with NETPOL_SONOBUOY_BIN).
#
# Run: `sonobuoy run --plugin plugin/netpol-conformance.yaml --wait` — the plugin as shipped,
# nothing applied first; this kernel's exemptions (hack/kernel-features.sh: SCTP here) go in as
# --plugin-env netpol-conformance.NETPOL_EXEMPT_FEATURES, as the suite's own runs here exempt
# them; more --plugin-env (e.g. netpol-conformance.E2E_FOCUS=…, .NETPOL_ALL_FEATURES=1) — then
# `sonobuoy retrieve`, `sonobuoy results` (DIR/results.txt) and `sonobuoy results --mode
# detailed` (DIR/results-detailed.json, one line per trial), and `sonobuoy delete --wait` at
# the end, also on failure and Ctrl-C. Exit status: 1 when the plugin reports a failed trial or
# the run did not complete.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/args.sh
source "$here/lib/args.sh"
# shellcheck source=lib/cache.sh
source "$here/lib/cache.sh"
# shellcheck source=lib/k8s-modules.sh
source "$here/lib/k8s-modules.sh"
root="$(cd "$here/.." && pwd)"

SONOBUOY_VERSION="${NETPOL_SONOBUOY_VERSION:-$(sed -n 's/^[[:space:]]*SONOBUOY_VERSION:[[:space:]]*\(v[0-9.]*\).*/\1/p' \
  "$root/.github/workflows/kind.yml" | head -n1)}"
[[ -n $SONOBUOY_VERSION ]] || { echo "sonobuoy-local: no SONOBUOY_VERSION in .github/workflows/kind.yml" >&2; exit 1; }
SONOBUOY_IMAGE="sonobuoy/sonobuoy:$SONOBUOY_VERSION"

log() { printf 'sonobuoy-local: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }

dir="$(netpol_cache_root)/upstream/sonobuoy-$SONOBUOY_VERSION"
sonobuoy="$dir/sonobuoy"

cli_built() { [[ -x "$1/sonobuoy" ]]; }

# Builds the sonobuoy CLI into STAGING.
build_cli() {
  local staging=$1
  log "building github.com/vmware-tanzu/sonobuoy@$SONOBUOY_VERSION"
  go_tools_module "$staging/module" sonobuoy "require github.com/vmware-tanzu/sonobuoy $SONOBUOY_VERSION" \
    github.com/vmware-tanzu/sonobuoy/cmd/sonobuoy/app
  (cd "$staging/module" && go build -trimpath -o "$staging/sonobuoy" \
    -ldflags "-s -w -X github.com/vmware-tanzu/sonobuoy/pkg/buildinfo.Version=$SONOBUOY_VERSION" \
    github.com/vmware-tanzu/sonobuoy)
  rm -rf "$staging/module"
}

build_only=0
state="${NETPOL_LOCAL_DIR:-/run/netpol-conformance/local}"
out=""
wait_minutes=90
plugin_env=()
flag() {
  case $1 in
    --state-dir) need "$@"; state=$2; took=2 ;;
    --out) need "$@"; out=$2; took=2 ;;
    --wait) need "$@"; wait_minutes=$2; took=2 ;;
    --plugin-env) need "$@"; plugin_env+=(--plugin-env "$2"); took=2 ;;
  esac
}
parse_flags flag "$@"

build_once "$dir" cli_built build_cli
images="$(NETPOL_SONOBUOY_BIN="$sonobuoy" NETPOL_SONOBUOY_IMAGE="$SONOBUOY_IMAGE" "$here/node-images.sh")"
if [[ $build_only == 1 ]]; then
  printf '%s\n' "$sonobuoy"
  exit 0
fi

kubeconfig="$state/kubeconfig"
[[ -r $kubeconfig ]] || die "no cluster at $state (no readable $kubeconfig); run \`netpol-conformance local up --runtime kubelet\` first"
mapfile -t sockets < <(find "$state" -path '*/root/run/containerd/containerd.sock' -type s 2>/dev/null | sort)
[[ ${#sockets[@]} -gt 0 ]] || die "no node containerd under $state: is it a --runtime kubelet cluster?"
ctr="$("$here/node-binaries.sh")/ctr"
# sonobuoy's image, and the plugin's as built from this checkout (it may be newer than the one
# `local up` imported).
for sock in "${sockets[@]}"; do
  for tar in sonobuoy.tar conformance.tar; do
    "$ctr" --address "$sock" -n k8s.io images import "$images/$tar" >/dev/null 2>&1 ||
      die "could not import $images/$tar into the containerd at $sock"
  done
done
log "imported $SONOBUOY_IMAGE and the plugin's image into ${#sockets[@]} node(s)"

out="$(out_dir "$out" netpol-sonobuoy)"
sb() { "$sonobuoy" --kubeconfig "$kubeconfig" "$@"; }
# shellcheck disable=SC2317  # run by the trap
cleanup() { sb delete --wait >/dev/null 2>&1 || log "warning: sonobuoy delete failed"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# sonobuoy's preflight wants cluster DNS pods (k8s-app=kube-dns or coredns in kube-system); the
# local cluster runs no cluster DNS, and nothing here needs it (the workers reach the
# aggregator by pod IP, the plugin the API server by the kubernetes Service's IP), so the
# preflight is skipped only when there is no DNS to find — on any other cluster it runs.
preflight=()
kc=("$("$here/control-plane.sh")/kubectl" --kubeconfig "$kubeconfig")
if [[ -z "$("${kc[@]}" -n kube-system get pods -l 'k8s-app in (kube-dns,coredns)' -o name 2>/dev/null)" ]]; then
  preflight=(--skip-preflight)
  log "the cluster runs no DNS pods, which sonobuoy's preflight looks for: --skip-preflight"
fi

# This kernel's gaps are exempted as the suite's own runs here exempt them (hack/test.sh): the
# plugin then reports those trials as not supported, with the reason, instead of failing them.
# shellcheck source=kernel-features.sh
source "$here/kernel-features.sh"
exempt="$(kernel_exemptions)"
if [[ -n $exempt ]]; then
  plugin_env=(--plugin-env "netpol-conformance.NETPOL_EXEMPT_FEATURES=$exempt" "${plugin_env[@]}")
fi

start=$SECONDS
rc=0
log "sonobuoy run --plugin plugin/netpol-conformance.yaml ${plugin_env[*]} (log in $out/run.log)"
sb run --plugin "$root/plugin/netpol-conformance.yaml" --sonobuoy-image "$SONOBUOY_IMAGE" \
  "${preflight[@]}" "${plugin_env[@]}" --wait="$wait_minutes" --wait-output silent >"$out/run.log" 2>&1 &
run_pid=$!
# A signal to this script alone (not to its process group) still stops the run and cleans up.
trap 'kill "$run_pid" 2>/dev/null; exit 130' INT TERM
wait "$run_pid" || rc=$?
trap 'exit 130' INT TERM
elapsed=$((SECONDS - start))
if [[ $rc -ne 0 ]] && ! "${kc[@]}" -n sonobuoy get pod sonobuoy >/dev/null 2>&1; then
  die "sonobuoy run failed before its aggregator existed: $(grep -m1 -E 'level=error' "$out/run.log" || head -n1 "$out/run.log")"
fi
sb status --json >"$out/status.json" 2>/dev/null || true
tarball="$(cd "$out" && sb retrieve . 2>>"$out/run.log" | tail -n1)" ||
  die "sonobuoy retrieve failed (sonobuoy run exit $rc); see $out/run.log"
[[ -f $out/$tarball ]] || die "sonobuoy retrieve gave no tarball (sonobuoy run exit $rc); see $out/run.log"
"$sonobuoy" results "$out/$tarball" >"$out/results.txt"
"$sonobuoy" results "$out/$tarball" --mode detailed >"$out/results-detailed.json"
{
  cat "$out/results.txt"
  printf 'sonobuoy %s, run %dm%ds, exit %d; artifacts: %s\n' "$SONOBUOY_VERSION" \
    $((elapsed / 60)) $((elapsed % 60)) "$rc" "$out"
} | tee "$out/summary.txt"
[[ $rc -eq 0 ]] || exit 1
grep -q '^Status: passed' "$out/results.txt"
