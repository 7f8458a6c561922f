#!/usr/bin/env bash
# Run Kubernetes' own NetworkPolicy e2e tests (test/e2e/network/netpol), unmodified, against a
# cluster, and print one line: suite, version, passed / failed / skipped, time.
#
#   hack/upstream-e2e.sh --build-only                      # build (once) and print the suite dir
#   hack/upstream-e2e.sh --kubeconfig K --out DIR [--nodes N] [--focus RE] [--skip RE]
#
# Build: `go test -c` of k8s.io/kubernetes/test/e2e at the control plane's version
# ($NETPOL_K8S_VERSION, default v1.37.2) from a throwaway go.mod (hack/lib/k8s-modules.sh, as
# the control plane and the node binaries are built), and the ginkgo CLI at the version that
# module requires (for parallel specs), cached in
# ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/upstream/e2e-<version>,
# one builder at a time (flock). The cache dir also gets `images`: the agnhost and pause images
# test/utils/image/manifest.go of that version names, which the nodes must already hold (no
# registry is needed when they do: the netpol pods use IfNotPresent).
#
# Run: `ginkgo --nodes N e2e.test -- --kubeconfig K --provider=local …` with upstream's focus
# for these tests (default '\[sig-network\] Netpol', the 48 traffic tests and the 2 API tests),
# --report-dir DIR (ginkgo's JUnit: DIR/junit_01.xml) and the full log in DIR/e2e.log. Kernel
# exemptions: when hack/kernel-features.sh says SCTP, '\[Feature:SCTPConnectivity\]' is added to
# the skip (what upstream's own CI skips where SCTP is missing) and the line says so; the two
# main-context tests that only *name* SCTP in a policy run over TCP and are judged. Default
# --nodes 2 (two cores here; each spec runs 9 pods). Exit status 1 when a spec failed or the run
# did not finish.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/args.sh
source "$here/lib/args.sh"
# shellcheck source=lib/cache.sh
source "$here/lib/cache.sh"
# shellcheck source=lib/k8s-modules.sh
source "$here/lib/k8s-modules.sh"
# shellcheck source=kernel-features.sh
source "$here/kernel-features.sh"

K8S_VERSION="${NETPOL_K8S_VERSION:-v1.37.2}"

log() { printf 'upstream-e2e: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }

dir="$(netpol_cache_root)/upstream/e2e-$K8S_VERSION"

# The agnhost and pause images a test/utils/image/manifest.go names, one full name a line:
# `configs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost", "2.66.1"}` with the registry
# that field defaults to (`PromoterE2eRegistry: "registry.k8s.io/e2e-test-images",`).
e2e_images() {
  local manifest=$1 field image registry
  while read -r _ field image; do
    registry="$(sed -n "s/^[[:space:]]*$field:[[:space:]]*\"\([^\"]*\)\",.*/\1/p" "$manifest" | head -n1)"
    [[ -n $registry ]] || die "no default for $field in $manifest"
    printf '%s/%s\n' "$registry" "$image"
  done < <(sed -n 's/.*configs\[\(Agnhost\|Pause\)\] = Config{list\.\([A-Za-z0-9]*\), "\([^"]*\)", "\([^"]*\)"}.*/\1 \2 \3:\4/p' "$manifest")
}

built() { [[ -x "$1/e2e.test" && -x "$1/ginkgo" && -s "$1/images" ]]; }

# Builds e2e.test, ginkgo and the images list into STAGING.
build_suite() {
  local staging=$1 src
  log "building k8s.io/kubernetes@$K8S_VERSION test/e2e (go test -c) and ginkgo; this takes a while once"
  k8s_module_dir "$staging/module" "$K8S_VERSION" k8s.io/kubernetes/test/e2e github.com/onsi/ginkgo/v2/ginkgo
  (cd "$staging/module" &&
    go test -c -trimpath -ldflags "$(k8s_ldflags "$K8S_VERSION")" -o "$staging/e2e.test" \
      k8s.io/kubernetes/test/e2e &&
    go build -trimpath -ldflags "-s -w" -o "$staging/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
  src="$(cd "$staging/module" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  e2e_images "$src/test/utils/image/manifest.go" >"$staging/images"
  [[ -s "$staging/images" ]] || die "no agnhost/pause image found in $src/test/utils/image/manifest.go"
  rm -rf "$staging/module"
}

build_only=0
kubeconfig=""
out=""
nodes=2
focus='\[sig-network\] Netpol'
skip=""
flag() {
  case $1 in
    --kubeconfig) need "$@"; kubeconfig=$2; took=2 ;;
    --out) need "$@"; out=$2; took=2 ;;
    --nodes) need "$@"; nodes=$2; took=2 ;;
    --focus) need "$@"; focus=$2; took=2 ;;
    --skip) need "$@"; skip=$2; took=2 ;;
  esac
}
parse_flags flag "$@"
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes needs a positive number, not $nodes"

build_once "$dir" built build_suite
if [[ $build_only == 1 ]]; then
  printf '%s\n' "$dir"
  exit 0
fi

kubeconfig="$(kubeconfig_arg "$kubeconfig")"
out="$(out_dir "$out" netpol-upstream-e2e)"

kernel_note=""
if [[ "$(kernel_exemptions)" == *SCTP* ]]; then
  skip="${skip:+$skip|}\[Feature:SCTPConnectivity\]"
  kernel_note="SCTP: this kernel has no SCTP sockets, so [Feature:SCTPConnectivity] is skipped, as upstream's CI skips it where SCTP is missing"
  log "$kernel_note"
fi

args=(--nodes "$nodes" --timeout 3h --no-color "--focus=$focus")
[[ -z $skip ]] || args+=("--skip=$skip")
args+=("$dir/e2e.test" -- --kubeconfig "$kubeconfig" --provider=local "--report-dir=$out"
  --disable-log-dump=true --dump-logs-on-failure=false)
printf '%q ' "$dir/ginkgo" "${args[@]}" >"$out/args"
printf '\n' >>"$out/args"

log "the nodes must hold: $(paste -sd" " "$dir/images")"
log "running e2e.test $K8S_VERSION ($focus) with $nodes ginkgo processes; log in $out/e2e.log"
start=$SECONDS
rc=0
(cd "$out" && "$dir/ginkgo" "${args[@]}") >"$out/e2e.log" 2>&1 || rc=$?
elapsed=$((SECONDS - start))

# ginkgo's closing line: "… N Passed | N Failed | N Pending | N Skipped", where Skipped also
# counts every spec outside the focus; the skipped column is the focused specs that did not run.
read -r passed failed <<<"$(sed -nE 's/.* ([0-9]+) Passed \| ([0-9]+) Failed \| [0-9]+ Pending \| [0-9]+ Skipped.*/\1 \2/p' "$out/e2e.log" | tail -n1)"
focused="$("$dir/e2e.test" --ginkgo.dry-run --ginkgo.no-color "--ginkgo.focus=$focus" --kubeconfig "$kubeconfig" 2>/dev/null |
  sed -nE 's/^Ran ([0-9]+) of [0-9]+ Specs.*/\1/p' | tail -n1)"
status=ok
if [[ -z ${passed:-} ]]; then
  passed=0 failed=0 skipped=0
  status="exit $rc, no ginkgo summary: $(grep -m1 -E 'FAIL|[Ee]rror' "$out/e2e.log" | cut -c1-160 || true)"
  rc=1
else
  skipped=$((${focused:-0} - passed - failed))
  [[ $rc -eq 0 ]] || status="exit $rc"
fi
{
  printf '%-12s %-8s %6s %6s %7s %8s  %s\n' suite version passed failed skipped time status
  printf '%-12s %-8s %6s %6s %7s %8s  %s\n' "e2e Netpol" "$K8S_VERSION" "$passed" "$failed" \
    "$skipped" "$((elapsed / 60))m$((elapsed % 60))s" "$status"
  [[ -z $kernel_note ]] || printf 'skipped: %s\n' "$kernel_note"
  if [[ $failed -gt 0 ]]; then
    printf 'failed:\n'
    grep -E '^\s*\[FAIL\]' "$out/e2e.log" | sed 's/^[[:space:]]*/  /' | sort -u || true
  fi
  printf 'artifacts: %s\n' "$out"
} | tee "$out/summary.txt"
[[ $rc -eq 0 ]]
