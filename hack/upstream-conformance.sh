#!/usr/bin/env bash
# Run sigs.k8s.io/network-policy-api's own conformance suites, unmodified, against a cluster, and
# print one table: suite, version, passed / failed / skipped, time.
#
#   hack/upstream-conformance.sh --build-only                 # build (once) and print the suite dirs
#   hack/upstream-conformance.sh --kubeconfig K --out DIR [upstream flags]
#
# Suites (--suites, comma list, run in this order whatever the list's order):
#   v1alpha1  ANP / BANP            network-policy-api $NETPOL_NPA_V1ALPHA1_VERSION (default v0.1.7)
#   v1alpha2  ClusterNetworkPolicy  network-policy-api $NETPOL_NPA_V1ALPHA2_VERSION (default v0.2.0)
#   v1beta1   ClusterNetworkPolicy  network-policy-api $NETPOL_NPA_V1BETA1_VERSION  (default v0.3.0;
#             opt-in: its CRD serves v1beta1 as storage and v1alpha2 alongside, and once applied
#             the v0.2.0 CRD can no longer be applied over it, so it runs last)
# Default --suites: v1alpha1,v1alpha2. Newest of each line the Go module proxy serves here: it
# answers 403 for v0.1.8 and v0.2.1, so those need the env overrides where a proxy has them.
#
# Build: `go test -c` of sigs.k8s.io/network-policy-api/conformance from a throwaway go.mod
# (hack/lib/npa-conformance.sh), with that version's experimental-channel CRDs
# (config/crd/experimental/policy.networking.k8s.io_*.yaml — upstream's, not the project's),
# cached in ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/upstream/network-policy-api-<version>,
# one builder at a time (flock).
#
# Run, per suite: apply its CRDs (server-side, replacing whatever CRD of that name is installed)
# and wait for Established, then run the test binary with KUBECONFIG=--kubeconfig:
#   profile mode (a ConformanceReport is written): -test.run '^TestConformanceProfiles$' with
#     --conformance-profiles (default per suite: AdminNetworkPolicy,BaselineAdminNetworkPolicy for
#     v1alpha1, ClusterNetworkPolicy otherwise), --organization, --project, --url, --version,
#     --contact, --additional-info (defaults describe this project) and --report-output;
#   without profiles (--conformance-profiles ''): -test.run '^TestConformance$', no report.
# Upstream's flags, passed to every suite as given (feature names differ between v1alpha1 and
# v1alpha2/v1beta1; names a suite does not know are ignored by it):
#   --supported-features LIST | --all-features (default: --all-features, unless
#   --supported-features is given), --exempt-features LIST, --conformance-profiles LIST,
#   --organization, --project, --url, --version, --contact LIST, --additional-info,
#   --report-output FILE (default DIR/<suite>/conformance-report.yaml; with several suites
#   "{suite}" in FILE is replaced by the suite, else -<suite> goes before the extension),
#   --debug, --cleanup-base-resources=BOOL.
#
# Kernel exemptions: upstream has no SCTP feature (its SCTP tests need only the API feature), so
# when hack/kernel-features.sh's kernel_exemptions says SCTP, the tests whose ShortName contains
# SCTP are not run (go test's own -test.skip on that level; the suite is not touched) and the run
# says so; they are counted in the table's "not run" column, not as skipped.
#
# Artifacts in --out DIR (default ${TMPDIR:-/tmp}/netpol-upstream-conformance.<time>), per suite
# DIR/<suite>/: go-test.log (`-test.v` output), conformance-report.yaml (profile mode), args
# (the command line); DIR/summary.txt is the table. Exit status 1 when any suite failed a test.
#
# Images: every pod of the suites runs registry.k8s.io/e2e-test-images/agnhost:2.45 (all 35
# containers of conformance/base/manifests.yaml, identical in v0.1.7, v0.2.0 and v0.3.0; no other
# image, no imagePullPolicy, so IfNotPresent). With no registry reachable, that exact name must
# already be on every node. The client containers have no command (the image's default, agnhost's
# `pause`); servers are `serve-hostname --tcp|--udp`, `porter` with SERVE_SCTP_PORT_<p> and, on
# the host-network pods, `netexec --udp-port`. Probes exec `/agnhost connect --timeout=3s` into
# container <statefulset>-client. Each suite's list is written to its cache dir as `images`.
# Note: agnhost's porter exits (log.Fatal) when SCTP sockets are missing, so on a kernel without
# SCTP the base StatefulSets never become Ready and the suites' Setup cannot finish.
#
# kubectl: $NETPOL_KUBECTL, else the one hack/control-plane.sh provides.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/args.sh
source "$here/lib/args.sh"
# shellcheck source=lib/cache.sh
source "$here/lib/cache.sh"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib/npa-conformance.sh
source "$here/lib/npa-conformance.sh"
# shellcheck source=kernel-features.sh
source "$here/kernel-features.sh"

V1ALPHA1_VERSION="${NETPOL_NPA_V1ALPHA1_VERSION:-v0.1.7}"
V1ALPHA2_VERSION="${NETPOL_NPA_V1ALPHA2_VERSION:-v0.2.0}"
V1BETA1_VERSION="${NETPOL_NPA_V1BETA1_VERSION:-v0.3.0}"
SUITE_ORDER=(v1alpha1 v1alpha2 v1beta1)

log() { printf 'upstream-conformance: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }

suite_version() {
  case $1 in
    v1alpha1) printf '%s\n' "$V1ALPHA1_VERSION" ;;
    v1alpha2) printf '%s\n' "$V1ALPHA2_VERSION" ;;
    v1beta1) printf '%s\n' "$V1BETA1_VERSION" ;;
    *) die "unknown suite $1 (v1alpha1, v1alpha2, v1beta1)" ;;
  esac
}

suite_profiles() {
  case $1 in
    v1alpha1) printf 'AdminNetworkPolicy,BaselineAdminNetworkPolicy\n' ;;
    *) printf 'ClusterNetworkPolicy\n' ;;
  esac
}

# shellcheck disable=SC2317  # called by build_once
suite_built() { [[ -x "$1/conformance.test" && -s "$1/shortnames" ]]; }

# Builds VERSION's suite into STAGING.
# shellcheck disable=SC2317  # called by build_once
build_suite() {
  log "building the conformance suite of sigs.k8s.io/network-policy-api@$2 (go test -c)"
  npa_build_suite "$@"
}

# Prints the directory holding VERSION's conformance.test, crds/, shortnames and images.
ensure_suite() {
  local version=$1 dir
  dir="$(netpol_cache_root)/upstream/network-policy-api-$version"
  build_once "$dir" suite_built build_suite "$version"
  printf '%s\n' "$dir"
}

build_only=0
kubeconfig=""
out=""
suites="v1alpha1,v1alpha2"
supported=""
all_features=""
exempt=""
profiles="unset"
organization="netpol-conformance"
project="netpol-enforcer"
url="$(sed -n 's/^repository = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
impl_version=""
contact=""
additional_info=""
report_output=""
extra=()

# shellcheck disable=SC2317  # called by parse_flags
flag() {
  case $1 in
    --kubeconfig) need "$@"; kubeconfig=$2; took=2 ;;
    --out) need "$@"; out=$2; took=2 ;;
    --suites) need "$@"; suites=$2; took=2 ;;
    --supported-features) need "$@"; supported=$2; took=2 ;;
    --all-features)
      # A bare flag, or --all-features=true|false.
      if [[ ${2:-} == true || ${2:-} == false ]]; then all_features=$2; took=2; else all_features=true; took=1; fi ;;
    --exempt-features) need "$@"; exempt=$2; took=2 ;;
    --conformance-profiles) need "$@"; profiles=$2; took=2 ;;
    --organization) need "$@"; organization=$2; took=2 ;;
    --project) need "$@"; project=$2; took=2 ;;
    --url) need "$@"; url=$2; took=2 ;;
    --version) need "$@"; impl_version=$2; took=2 ;;
    --contact) need "$@"; contact=$2; took=2 ;;
    --additional-info) need "$@"; additional_info=$2; took=2 ;;
    --report-output) need "$@"; report_output=$2; took=2 ;;
    --debug) extra+=(--debug); took=1 ;;
    --cleanup-base-resources) need "$@"; extra+=("--cleanup-base-resources=$2"); took=2 ;;
  esac
}
parse_flags flag "$@"

selected=()
IFS=, read -r -a wanted <<<"$suites"
for w in "${wanted[@]}"; do suite_version "$w" >/dev/null; done
for s in "${SUITE_ORDER[@]}"; do
  for w in "${wanted[@]}"; do [[ $w == "$s" ]] && selected+=("$s") && break; done
done
[[ ${#selected[@]} -gt 0 ]] || die "--suites names no suite"

declare -A suite_dir
for s in "${selected[@]}"; do
  suite_dir[$s]="$(ensure_suite "$(suite_version "$s")")"
done
if [[ $build_only == 1 ]]; then
  for s in "${selected[@]}"; do printf '%s\t%s\t%s\n' "$s" "$(suite_version "$s")" "${suite_dir[$s]}"; done
  exit 0
fi

kubeconfig="$(kubeconfig_arg "$kubeconfig")"
out="$(out_dir "$out" netpol-upstream-conformance)"

kubectl="${NETPOL_KUBECTL:-}"
if [[ -z $kubectl ]]; then kubectl="$("$here/control-plane.sh")/kubectl"; fi
kc() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

[[ -n $impl_version ]] ||
  impl_version="$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo unknown)"
[[ -n $contact ]] || contact="$url/issues"
[[ -n $additional_info ]] || additional_info="$url (hack/upstream-conformance.sh)"
if [[ -z $all_features && -z $supported ]]; then all_features=true; fi

# Kernel exemptions become go test -test.skip patterns on the ShortName level.
skip_pattern=""
kernel_note=""
if [[ "$(kernel_exemptions)" == *SCTP* ]]; then
  skip_pattern='^TestConformance(Profiles)?$/SCTP'
  kernel_note="SCTP: this kernel has no SCTP sockets; upstream has no SCTP feature to exempt, so tests named *SCTP* are not run (go test -test.skip)"
  log "$kernel_note"
fi

report_path() {
  local s=$1
  if [[ -z $report_output ]]; then
    printf '%s\n' "$out/$s/conformance-report.yaml"
  elif [[ ${#selected[@]} -eq 1 ]]; then
    printf '%s\n' "$report_output"
  elif [[ $report_output == *"{suite}"* ]]; then
    printf '%s\n' "${report_output//\{suite\}/$s}"
  elif [[ $report_output == *.* ]]; then
    printf '%s\n' "${report_output%.*}-$s.${report_output##*.}"
  else
    printf '%s\n' "$report_output-$s"
  fi
}

# The reason a run stopped: testify's "Messages:" line, else the first error a test logged.
first_error() {
  local line
  line="$(sed -n 's/^[[:space:]]*Messages:[[:space:]]*//p' "$1" | head -n1)"
  [[ -n $line ]] || line="$(grep -m1 -E '\.go:[0-9]+: .*([Ee]rror|fail)|^panic:' "$1" | sed 's/^[[:space:]]*//')"
  printf '%s\n' "${line:0:160}"
}

rows=()
any_failed=0
for s in "${selected[@]}"; do
  version="$(suite_version "$s")"
  dir="${suite_dir[$s]}"
  art="$out/$s"
  mkdir -p "$art"

  log "$s ($version): applying upstream's CRDs"
  kc apply --server-side --force-conflicts -f "$dir/crds" >&2
  kc wait --for condition=Established --timeout=60s -f "$dir/crds" >&2

  suite_profiles_value=$profiles
  [[ $suite_profiles_value != unset ]] || suite_profiles_value="$(suite_profiles "$s")"
  args=(-test.v -test.timeout 40m)
  if [[ -n $suite_profiles_value ]]; then
    report="$(report_path "$s")"
    mkdir -p "$(dirname "$report")"
    args+=(-test.run '^TestConformanceProfiles$'
      "--conformance-profiles=$suite_profiles_value" "--organization=$organization"
      "--project=$project" "--url=$url" "--version=$impl_version" "--contact=$contact"
      "--additional-info=$additional_info" "--report-output=$report")
  else
    report=""
    args+=(-test.run '^TestConformance$')
  fi
  [[ -z $skip_pattern ]] || args+=(-test.skip "$skip_pattern")
  [[ -z $supported ]] || args+=("--supported-features=$supported")
  [[ -z $all_features ]] || args+=("--all-features=$all_features")
  [[ -z $exempt ]] || args+=("--exempt-features=$exempt")
  args+=("${extra[@]}")
  printf '%q ' "$dir/conformance.test" "${args[@]}" >"$art/args"
  printf '\n' >>"$art/args"

  not_run=0
  [[ -z $skip_pattern ]] || not_run="$(grep -c SCTP "$dir/shortnames" || true)"
  log "$s ($version): running upstream's suite; go test -v output in $art/go-test.log"
  start=$SECONDS
  rc=0
  # The binary's working directory is the artifact dir; it reads nothing from it.
  (cd "$art" && KUBECONFIG="$kubeconfig" "$dir/conformance.test" "${args[@]}") >"$art/go-test.log" 2>&1 || rc=$?
  elapsed=$((SECONDS - start))
  read -r passed failed skipped <<<"$(npa_parse_results "$art/go-test.log")"
  status=ok
  if [[ $rc -ne 0 ]]; then
    any_failed=1
    status="exit $rc"
    if [[ $((passed + failed + skipped)) -eq 0 ]]; then
      status="exit $rc before any test: $(first_error "$art/go-test.log")"
    fi
  fi
  [[ -z $report || -f $report ]] || status+=", no report"
  rows+=("$s|$version|$passed|$failed|$skipped|$not_run|$((elapsed / 60))m$((elapsed % 60))s|$status")
  if [[ $failed -gt 0 ]]; then
    log "$s ($version): failed: $(npa_failed_tests "$art/go-test.log" | paste -sd' ')"
  fi
done

{
  printf '%-9s %-8s %6s %6s %7s %7s %8s  %s\n' suite version passed failed skipped "not run" time status
  for r in "${rows[@]}"; do
    IFS='|' read -r s v p f k n t st <<<"$r"
    printf '%-9s %-8s %6s %6s %7s %7s %8s  %s\n' "$s" "$v" "$p" "$f" "$k" "$n" "$t" "$st"
  done
  [[ -z $kernel_note ]] || printf 'not run: %s\n' "$kernel_note"
  printf 'artifacts: %s\n' "$out"
} | tee "$out/summary.txt"
exit "$any_failed"
