#!/usr/bin/env bash
# Validate the repository's Kubernetes manifests against a real API server with a server-side
# dry run (`kubectl apply --dry-run=server`): schema, defaulting, admission and RBAC rules.
#
#   hack/check-manifests.sh KUBECONFIG
#   hack/check-manifests.sh --bare      # against a throwaway etcd + kube-apiserver on loopback
#
# --bare starts etcd and kube-apiserver from hack/control-plane.sh's directory in a temporary
# directory (random loopback ports, a static admin token, a self-made service-account key;
# needs openssl; no root) and stops and removes them on exit. No controllers run there, which
# a dry run does not need.
#
# Checked:
#   plugin/rbac.yaml              in a scratch namespace standing in for `sonobuoy`;
#   plugin/netpol-conformance.yaml  not a Kubernetes object: its podSpec, main container
#                                 (`spec`) and volumes are rendered into the Pod Sonobuoy would
#                                 create (minus Sonobuoy's sidecar) and dry-run in the scratch
#                                 namespace, which enforces the `restricted` Pod Security level;
#                                 the plugin's sonobuoy-config is checked for the keys the
#                                 contract needs (driver Job, result-format junit, result-files);
#   enforcer/deploy/              when present: rendered with `kubectl kustomize` if it is a
#                                 kustomization, else each *.yaml as written.
#
# The only objects really created are the scratch namespace (labelled
# netpol-conformance/manifest-check=true, with one ServiceAccount so the Pod's account exists)
# and any namespace enforcer/deploy/*.yaml declares that the cluster lacks; all are deleted on
# exit. kubectl comes from hack/control-plane.sh's directory unless $KUBECTL is set.
# Needs python3 with PyYAML to render the plugin's Pod.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf 'check-manifests: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 ]] || die "usage: hack/check-manifests.sh KUBECONFIG | --bare"
bare=0
kubeconfig=$1
if [[ "$1" == --bare ]]; then
  bare=1
else
  [[ -r "$kubeconfig" ]] || die "kubeconfig '$kubeconfig' is not a readable file"
fi

bin_dir=""
if [[ -z "${KUBECTL:-}" || $bare -eq 1 ]]; then
  bin_dir="$("$root/hack/control-plane.sh")" || die "hack/control-plane.sh could not provide the control-plane binaries"
fi
KUBECTL="${KUBECTL:-$bin_dir/kubectl}"
[[ -x "$KUBECTL" ]] || die "kubectl '$KUBECTL' is not executable"
command -v python3 >/dev/null 2>&1 || die "python3 is not installed (needed to render the plugin's Pod)"
python3 -c 'import yaml' 2>/dev/null || die "PyYAML is missing (Debian/Ubuntu: apt-get install python3-yaml)"

k() { "$KUBECTL" --kubeconfig "$kubeconfig" "$@"; }

tmp="$(mktemp -d)"
scratch="netpol-manifest-check-$RANDOM$RANDOM"
created_namespaces=()
bare_pids=()
cleanup() {
  local ns pid
  if [[ ${#bare_pids[@]} -eq 0 ]]; then
    for ns in "${created_namespaces[@]}"; do
      k delete namespace "$ns" --wait=false >/dev/null 2>&1 ||
        log "warning: could not delete namespace $ns; delete it by hand"
    done
  fi
  for pid in "${bare_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${bare_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_bare_apiserver: etcd + kube-apiserver on loopback, state under $tmp/bare; sets kubeconfig.
start_bare_apiserver() {
  command -v openssl >/dev/null 2>&1 || die "openssl is not installed (needed by --bare for the service-account key)"
  local dir="$tmp/bare" base etcd_client etcd_peer api token i pid
  mkdir -p "$dir"
  base=$((20000 + RANDOM % 30000))
  etcd_client=$base etcd_peer=$((base + 1)) api=$((base + 2))
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null || die "openssl could not make a service-account key"
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null || die "openssl could not derive the public key"
  token="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s,admin,admin,system:masters\n' "$token" >"$dir/tokens.csv"
  "$bin_dir/etcd" --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "default=http://127.0.0.1:$etcd_peer" >"$dir/etcd.log" 2>&1 &
  bare_pids+=($!)
  "$bin_dir/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_client" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api" \
    --endpoint-reconciler-type none --cert-dir "$dir/certs" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.96.0.0/16 >"$dir/apiserver.log" 2>&1 &
  bare_pids+=($!)
  kubeconfig="$dir/kubeconfig"
  cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: bare, cluster: {server: "https://127.0.0.1:$api", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: bare, context: {cluster: bare, user: admin}}]
current-context: bare
KUBECONFIG
  log "starting a bare etcd + kube-apiserver on 127.0.0.1:$api"
  for ((i = 0; i < 120; i++)); do
    if k get --raw /readyz >/dev/null 2>&1; then
      return 0
    fi
    for pid in "${bare_pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/etcd.log" "$dir/apiserver.log" >&2; die "the bare etcd or kube-apiserver exited"; }
    done
    sleep 1
  done
  tail -n 20 "$dir/apiserver.log" >&2
  die "the bare kube-apiserver did not become ready within 120 s"
}

if [[ $bare -eq 1 ]]; then
  start_bare_apiserver
fi
k version >/dev/null || die "cannot reach the API server of $kubeconfig"

create_namespace() {
  k create namespace "$1" --save-config >/dev/null || die "could not create namespace $1"
  created_namespaces+=("$1")
  k label namespace "$1" netpol-conformance/manifest-check=true >/dev/null ||
    die "could not label namespace $1"
}

failures=0
# dry_run WHAT FILE: one server-side dry run; a failure is counted, not fatal.
dry_run() {
  local what=$1 file=$2
  if k apply --dry-run=server -f "$file" >"$tmp/out" 2>&1; then
    log "ok    $what"
    sed 's/^/        /' "$tmp/out" >&2
  else
    log "FAIL  $what"
    sed 's/^/        /' "$tmp/out" >&2
    failures=$((failures + 1))
  fi
}

# --- scratch namespace -----------------------------------------------------------------------
create_namespace "$scratch"
k label namespace "$scratch" \
  pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/enforce-version=latest >/dev/null ||
  die "could not set the restricted Pod Security level on $scratch"

# --- plugin/rbac.yaml ------------------------------------------------------------------------
# The manifests name Sonobuoy's namespace; point them at the scratch one (which exists, so the
# namespaced objects can be dry-run too).
sed -E "s/^([[:space:]]*(name|namespace):[[:space:]]*)sonobuoy[[:space:]]*\$/\1$scratch/" \
  "$root/plugin/rbac.yaml" >"$tmp/rbac.yaml"
grep -q "namespace: $scratch" "$tmp/rbac.yaml" ||
  die "plugin/rbac.yaml names no 'namespace: sonobuoy'; update this script with it"
dry_run "plugin/rbac.yaml" "$tmp/rbac.yaml"

# --- plugin/netpol-conformance.yaml ----------------------------------------------------------
sa="$(python3 - "$root/plugin/netpol-conformance.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
print((doc.get("podSpec") or {}).get("serviceAccountName") or "")
PY
)" || die "cannot read plugin/netpol-conformance.yaml"
if [[ -n "$sa" ]]; then
  # The service account admission plugin rejects Pods whose account does not exist.
  k -n "$scratch" create serviceaccount "$sa" >/dev/null || die "could not create service account $sa in $scratch"
fi
if python3 - "$root/plugin/netpol-conformance.yaml" "$scratch" >"$tmp/plugin-pod.yaml" 2>"$tmp/render.err" <<'PY'; then
import copy, sys, yaml

path, namespace = sys.argv[1], sys.argv[2]
doc = yaml.safe_load(open(path))
problems = []
cfg = doc.get("sonobuoy-config") or {}
if str(cfg.get("driver", "")).lower() != "job":
    problems.append("sonobuoy-config.driver is not Job")
if cfg.get("result-format") != "junit":
    problems.append("sonobuoy-config.result-format is not junit")
if "junit.xml" not in (cfg.get("result-files") or []):
    problems.append("sonobuoy-config.result-files does not list junit.xml")
name = cfg.get("plugin-name") or ""
if not name or name == "sonobuoy":
    problems.append("sonobuoy-config.plugin-name is missing or the reserved name sonobuoy")
spec = doc.get("spec")
if not isinstance(spec, dict) or not spec.get("image"):
    problems.append("spec (the plugin's container) is missing or has no image")
env = {e.get("name") for e in (spec or {}).get("env") or []}
for var in ("E2E_FOCUS", "E2E_SKIP", "NETPOL_PROBE_TARGET"):
    if var not in env:
        problems.append(f"spec.env lacks {var}")
if problems:
    sys.exit("plugin/netpol-conformance.yaml: " + "; ".join(problems))

# What Sonobuoy's job driver does: the given podSpec, plus the container, plus the results
# emptyDir and the extra volumes (its worker sidecar is left out: not ours to check).
pod_spec = copy.deepcopy(doc.get("podSpec") or {})
pod_spec["containers"] = list(pod_spec.get("containers") or []) + [spec]
volumes = list(pod_spec.get("volumes") or []) + [{"name": "results", "emptyDir": {}}]
volumes += list(doc.get("extra-volumes") or [])
pod_spec["volumes"] = volumes
pod = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": f"sonobuoy-{name}-job-check",
        "namespace": namespace,
        "labels": {"component": "sonobuoy", "sonobuoy-plugin": name},
    },
    "spec": pod_spec,
}
yaml.safe_dump(pod, sys.stdout, sort_keys=False)
PY
  dry_run "plugin/netpol-conformance.yaml rendered as the plugin Pod (restricted Pod Security)" "$tmp/plugin-pod.yaml"
else
  log "FAIL  plugin/netpol-conformance.yaml cannot be rendered into a Pod"
  sed 's/^/        /' "$tmp/render.err" >&2
  failures=$((failures + 1))
fi

# --- enforcer/deploy/ --------------------------------------------------------------------------
# A kustomization (kustomization.yaml) is rendered with `kubectl kustomize` and checked as one;
# otherwise each *.yaml is checked as written.
deploy="$root/enforcer/deploy"
enforcer_manifests=()
if [[ -f "$deploy/kustomization.yaml" ]]; then
  if k kustomize "$deploy" >"$tmp/enforcer.yaml" 2>"$tmp/kustomize.err"; then
    enforcer_manifests=("$tmp/enforcer.yaml")
  else
    log "FAIL  enforcer/deploy: kubectl kustomize failed"
    sed 's/^/        /' "$tmp/kustomize.err" >&2
    failures=$((failures + 1))
  fi
else
  shopt -s nullglob
  enforcer_manifests=("$deploy"/*.yaml)
  shopt -u nullglob
fi
if [[ ! -d "$deploy" ]]; then
  log "skip  enforcer/deploy (not present)"
elif [[ ${#enforcer_manifests[@]} -gt 0 ]]; then
  # A namespace the manifests declare must exist for their namespaced objects to be dry-run.
  declared="$(python3 - "${enforcer_manifests[@]}" <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if isinstance(doc, dict) and doc.get("kind") == "Namespace":
            print(doc["metadata"]["name"])
PY
  )" || die "cannot parse enforcer/deploy as YAML"
  for ns in $declared; do
    if ! k get namespace "$ns" >/dev/null 2>&1; then
      create_namespace "$ns"
    fi
  done
  for f in "${enforcer_manifests[@]}"; do
    if [[ "$f" == "$tmp/enforcer.yaml" ]]; then
      dry_run "enforcer/deploy (kubectl kustomize)" "$f"
    else
      dry_run "enforcer/deploy/${f##*/}" "$f"
    fi
  done
fi

if [[ $failures -ne 0 ]]; then
  die "$failures manifest check(s) failed"
fi
log "all manifests passed the server-side dry run"
