#!/usr/bin/env bash
# Run the suite against the kind cluster from hack/kind-up.sh and collect its JUnit.
#
#   hack/kind-run.sh [--name NAME] [--mode binary|plugin] [--junit-dir DIR]
#                    [--expect pass|no-enforcement|report] [-- RUN-ARGS...]
#
#   --mode binary   (default) run the netpol-conformance binary here against the cluster:
#                   $NETPOL_BIN, else target/release/netpol-conformance, else the one on PATH.
#                   RUN-ARGS go to `netpol-conformance run` (e.g. --test-threads 4 --skip sctp).
#   --mode plugin   run the Sonobuoy plugin (plugin/netpol-conformance.yaml) with image
#                   $NETPOL_SUITE_IMAGE, loaded into kind first; needs the sonobuoy CLI.
#                   The results tarball is kept in DIR as well.
#   --junit-dir     where junit.xml and the log go (default _artifacts/junit/NAME)
#   --expect        how the run is judged (hack/kind/junit-verdict.py):
#                     pass            nothing failed or errored (default)
#                     no-enforcement  exactly the cases expecting a denial failed (a CNI
#                                     without policy support, kind-up.sh none; which ones
#                                     comes from `netpol-conformance plan --json`)
#                     report          print the counts; any JUnit file is a success
#
# E2E_FOCUS, E2E_SKIP, NETPOL_PROBE_TARGET, NETPOL_TEST_THREADS, NETPOL_SCTP (0: no SCTP cases),
# NETPOL_SUPPORTED_FEATURES, NETPOL_EXEMPT_FEATURES, NETPOL_ALL_FEATURES (which features are judged),
# NETPOL_AGNHOST_IMAGE and NETPOL_IMPLEMENTATION (the JUnit property; default kind/<what
# kind-up.sh installed>) are passed on when set (in plugin mode as --plugin-env). Exit status: 0 when the run meets --expect, 1 when it
# does not or wrote no JUnit, 2 on bad usage.
set -euo pipefail

# shellcheck source=kind/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/kind/common.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

mode=binary
junit_dir=""
expect=pass
run_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name | --mode | --junit-dir | --expect)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      case "$1" in
        --name) KIND_CLUSTER_NAME=$2 ;;
        --mode) mode=$2 ;;
        --junit-dir) junit_dir=$2 ;;
        --expect) expect=$2 ;;
      esac
      shift
      ;;
    --) shift; run_args=("$@"); break ;;
    -h | --help) usage ;;
    *) die "unknown argument '$1' (see --help; arguments for the suite go after --)" ;;
  esac
  shift
done
case "$mode" in binary | plugin) ;; *) die "--mode must be binary or plugin, not '$mode'" ;; esac
case "$expect" in pass | no-enforcement | report) ;; *) die "--expect must be pass, no-enforcement or report, not '$expect'" ;; esac
junit_dir="${junit_dir:-$REPO_ROOT/_artifacts/junit/$KIND_CLUSTER_NAME}"

need "$KIND" "to reach the cluster"
need "$KUBECTL" "to prepare the cluster"
need python3 "to judge the JUnit (hack/kind/junit-verdict.py)"
cluster_exists || die "no kind cluster named '$KIND_CLUSTER_NAME'; create it with hack/kind-up.sh"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$junit_dir"
junit="$junit_dir/junit.xml"
rm -f "$junit"
kubeconfig="$tmp/kubeconfig"
"$KIND" get kubeconfig --name "$KIND_CLUSTER_NAME" >"$kubeconfig" ||
  die "could not get the kubeconfig of kind cluster '$KIND_CLUSTER_NAME'"

passed_env=(E2E_FOCUS E2E_SKIP NETPOL_PROBE_TARGET NETPOL_TEST_THREADS NETPOL_SCTP
  NETPOL_SUPPORTED_FEATURES NETPOL_EXEMPT_FEATURES NETPOL_ALL_FEATURES
  NETPOL_AGNHOST_IMAGE NETPOL_IMPLEMENTATION)

# The JUnit's `implementation` property: what hack/kind-up.sh recorded for this cluster.
if [[ -z "${NETPOL_IMPLEMENTATION:-}" ]]; then
  NETPOL_IMPLEMENTATION="$("$KUBECTL" --kubeconfig "$kubeconfig" -n kube-system get configmap netpol-kind-info \
    -o jsonpath='{.data.implementation}' 2>/dev/null || true)"
  if [[ -n "$NETPOL_IMPLEMENTATION" ]]; then
    NETPOL_IMPLEMENTATION="kind/$NETPOL_IMPLEMENTATION"
    export NETPOL_IMPLEMENTATION
  fi
fi

# The suite binary: $NETPOL_BIN, else the release build, else the one on PATH.
suite_bin() {
  local bin="${NETPOL_BIN:-}"
  if [[ -z "$bin" && -x "$REPO_ROOT/target/release/netpol-conformance" ]]; then
    bin="$REPO_ROOT/target/release/netpol-conformance"
  fi
  if [[ -z "$bin" ]]; then
    bin="$(command -v netpol-conformance || true)"
  fi
  [[ -n "$bin" && -x "$bin" ]] ||
    die "no netpol-conformance binary: set NETPOL_BIN or run cargo build --release -p netpol-conformance --bin netpol-conformance"
  printf '%s\n' "$bin"
}

run_binary() {
  local bin
  bin="$(suite_bin)"
  log "running $bin against kind-$KIND_CLUSTER_NAME; JUnit into $junit"
  set +e
  "$bin" run --kubeconfig "$kubeconfig" --junit "$junit" "${run_args[@]}" 2>&1 |
    tee "$junit_dir/netpol-conformance.log"
  local status=${PIPESTATUS[0]}
  set -e
  log "netpol-conformance exited with status $status"
}

run_plugin() {
  need "$SONOBUOY" "for --mode plugin"
  [[ ${#run_args[@]} -eq 0 ]] ||
    die "--mode plugin takes no suite arguments; select cases with E2E_FOCUS / E2E_SKIP"
  local plugin="$REPO_ROOT/plugin/netpol-conformance.yaml" name=netpol-conformance
  local var wait_minutes="${SONOBUOY_WAIT_MINUTES:-90}"
  local args=(run --kubeconfig "$kubeconfig" --plugin "$plugin"
    --plugin-image "$name:$NETPOL_SUITE_IMAGE"
    --wait="$wait_minutes" --wait-output=progress)
  for var in "${passed_env[@]}"; do
    if [[ -n "${!var:-}" ]]; then
      args+=(--plugin-env "$name.$var=${!var}")
    fi
  done

  log "loading $NETPOL_SUITE_IMAGE into kind-$KIND_CLUSTER_NAME"
  "$KIND" load docker-image "$NETPOL_SUITE_IMAGE" --name "$KIND_CLUSTER_NAME" ||
    die "kind load docker-image $NETPOL_SUITE_IMAGE failed; build it with hack/kind-images.sh suite"
  # Start from nothing: a previous run's namespace would still be terminating. The plugin runs
  # as shipped, under Sonobuoy's own service account, with nothing applied beforehand.
  "$SONOBUOY" delete --kubeconfig "$kubeconfig" --wait >/dev/null 2>&1 || true

  log "sonobuoy ${args[*]}"
  if ! "$SONOBUOY" "${args[@]}"; then
    log "warning: sonobuoy run reported a problem; retrieving what there is"
  fi
  "$SONOBUOY" status --kubeconfig "$kubeconfig" || true

  mkdir -p "$tmp/retrieved" "$tmp/extracted"
  local tarball
  tarball="$("$SONOBUOY" retrieve "$tmp/retrieved" --kubeconfig "$kubeconfig")" ||
    die "sonobuoy retrieve failed; see sonobuoy status and the sonobuoy namespace's pods"
  cp "$tarball" "$junit_dir/" || die "could not keep $tarball"
  tar -xzf "$tarball" -C "$tmp/extracted" || die "could not extract $tarball"
  local found="$tmp/extracted/plugins/$name/results/global/junit.xml"
  if [[ -f "$found" ]]; then
    cp "$found" "$junit"
  fi
  local errors="$tmp/extracted/plugins/$name/errors"
  if [[ -d "$errors" ]]; then
    log "sonobuoy recorded plugin errors:"
    find "$errors" -type f -exec cat {} + >&2 || true
  fi
  # For humans; its exit status says nothing about test failures.
  "$SONOBUOY" results "$tarball" --plugin "$name" || true
  "$SONOBUOY" delete --kubeconfig "$kubeconfig" --wait || log "warning: sonobuoy delete failed"
}

case "$mode" in
  binary) run_binary ;;
  plugin) run_plugin ;;
esac

[[ -s "$junit" ]] || die "the run wrote no JUnit file ($junit)"
verdict="$REPO_ROOT/hack/kind/junit-verdict.py"
case "$expect" in
  pass) python3 "$verdict" summary "$junit" ;;
  no-enforcement)
    # Which trials expect a denial: the suite's own plan of the table, not a second reading of it.
    "$(suite_bin)" plan --json >"$tmp/plan.json" || die "netpol-conformance plan --json failed"
    python3 "$verdict" no-enforcement "$junit" --plan "$tmp/plan.json"
    ;;
  report) python3 "$verdict" summary "$junit" || true ;;
esac
