#!/usr/bin/env bash
# Checks of kind-up.sh / kind-run.sh / kind-down.sh with stand-ins for kind, kubectl, docker and
# helm that record their arguments (no Docker, no cluster, no network).
#
#   hack/kind/kind-scripts-test.sh
#
# Each check names the command a script must (or must not) have issued; exits non-zero if any
# check fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
hack="$here/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- stand-ins -------------------------------------------------------------------------------
mkdir -p "$tmp/bin"
export STUB_LOG="$tmp/calls" STUB_STATE="$tmp/clusters"
cat >"$tmp/bin/kind" <<'STUB'
#!/usr/bin/env bash
echo "kind $*" >>"$STUB_LOG"
touch "$STUB_STATE"
name=netpol
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == --name ]]; then j=$((i + 1)); name=${!j}; fi
done
case "$1 ${2:-}" in
  "get clusters") cat "$STUB_STATE" ;;
  "get kubeconfig") echo "apiVersion: v1" ;;
  "create cluster")
    echo "$name" >>"$STUB_STATE"
    for ((i = 1; i <= $#; i++)); do
      if [[ "${!i}" == --config ]]; then j=$((i + 1)); cat "${!j}" >"$STUB_LOG.config"; fi
    done
    ;;
  "delete cluster") grep -vxF "$name" "$STUB_STATE" >"$STUB_STATE.new" || true; mv "$STUB_STATE.new" "$STUB_STATE" ;;
esac
exit 0
STUB
cat >"$tmp/bin/kubectl" <<'STUB'
#!/usr/bin/env bash
echo "kubectl $*" >>"$STUB_LOG"
args=" $* "
if [[ "$args" == *" kustomize "* ]]; then
  printf 'kind: DaemonSet\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr.io/x/netpol-enforcer:0.1.0\n          imagePullPolicy: Always\n'
elif [[ "$args" == *" get -f "* && "$args" == *DaemonSet* ]]; then
  echo "kube-system netpol-enforcer"
elif [[ "$args" == *" create configmap "* ]]; then
  echo "apiVersion: v1"
fi
if [[ "$args" == *" -f - "* ]]; then
  cat >/dev/null # read the pipe as kubectl does, or the writer may die of SIGPIPE
fi
if [[ "$args" == *" apply -f "* ]]; then
  # keep what was applied from files, for the image checks
  for ((i = 1; i <= $#; i++)); do
    if [[ "${!i}" == -f ]]; then j=$((i + 1)); f=${!j}; [[ -f "$f" ]] && cat "$f" >>"$STUB_LOG.applied"; fi
  done
fi
exit 0
STUB
cat >"$tmp/bin/docker" <<'STUB'
#!/usr/bin/env bash
echo "docker $*" >>"$STUB_LOG"
[[ "$1 ${2:-}" == "image inspect" && "${3:-}" == "${STUB_MISSING_IMAGE:-none}" ]] && exit 1
exit 0
STUB
cat >"$tmp/bin/helm" <<'STUB'
#!/usr/bin/env bash
echo "helm $*" >>"$STUB_LOG"
exit 0
STUB
chmod +x "$tmp/bin/"*
export PATH="$tmp/bin:$PATH" KIND=kind KUBECTL=kubectl DOCKER=docker HELM=helm

failed=0
pass() { printf 'ok    %s\n' "$1"; }
fail() { printf 'FAIL  %s\n' "$1"; failed=1; }
# called WHAT PATTERN: some recorded call matches the extended regex PATTERN.
called() { if grep -Eq -- "$2" "$STUB_LOG"; then pass "$1"; else fail "$1 (no call matching: $2)"; fi; }
not_called() { if grep -Eq -- "$2" "$STUB_LOG"; then fail "$1 (unexpected call matching: $2)"; else pass "$1"; fi; }
# said WHAT TEXT: the last run's output contains TEXT.
said() { if grep -qF -- "$2" "$tmp/out"; then pass "$1"; else fail "$1 (output lacks: $2)"; fi; }
fresh() { : >"$STUB_LOG"; : >"$STUB_LOG.applied"; : >"$STUB_LOG.config"; : >"$STUB_STATE"; }
run() { "$@" >"$tmp/out" 2>&1; }

# --- none ------------------------------------------------------------------------------------
fresh
run "$hack/kind-up.sh" none || { fail "kind-up.sh none exits 0"; cat "$tmp/out"; }
called "none: creates the cluster named netpol" '^kind create cluster --name netpol --config '
called "none: pins kindnet to the policy-free image" 'set image daemonset/kindnet kindnet-cni=docker.io/kindest/kindnetd:v20230809-80a64d96'
not_called "none: installs no CRDs" 'network-policy-api'
not_called "none: keeps the default CNI" '^helm '
called "none: waits for the nodes" 'wait --for=condition=Ready nodes --all'
# config_has WHAT PATTERN: the kind config given to `kind create cluster` matches PATTERN.
config_has() { if grep -Eq -- "$2" "$STUB_LOG.config"; then pass "$1"; else fail "$1 (kind config lacks: $2)"; fi; }
config_has "none: keeps kind's default CNI" 'disableDefaultCNI: false'
if [[ "$(grep -c -- '- role: worker' "$STUB_LOG.config")" -eq 2 && "$(grep -c -- '- role: control-plane' "$STUB_LOG.config")" -eq 1 ]]; then
  pass "the cluster has 1 control plane and 2 workers"
else
  fail "the cluster has 1 control plane and 2 workers"
fi
if run "$hack/kind-up.sh" none; then fail "a second kind-up.sh on the same name fails"; else
  said "a second kind-up.sh on the same name fails, saying so" "already exists"; fi
run "$hack/kind-down.sh" || fail "kind-down.sh exits 0"
called "kind-down.sh deletes the cluster" '^kind delete cluster --name netpol'
if run "$hack/kind-down.sh"; then said "kind-down.sh without a cluster is a no-op" "nothing to delete"; else
  fail "kind-down.sh without a cluster exits 0"; fi

# --- calico ----------------------------------------------------------------------------------
fresh
run "$hack/kind-up.sh" calico --name c1 || { fail "kind-up.sh calico exits 0"; cat "$tmp/out"; }
called "calico: cluster named by --name" '^kind create cluster --name c1 '
called "calico: applies the pinned Calico manifest server-side" 'apply --server-side -f https://raw.githubusercontent.com/projectcalico/calico/v3.30.2/manifests/calico.yaml'
called "calico: lets Felix accept kind's loose rp_filter" 'set env daemonset/calico-node FELIX_IGNORELOOSERPF=true'
not_called "calico: leaves kindnet alone" 'kindnet-cni='
config_has "calico: no default CNI" 'disableDefaultCNI: true'
config_has "calico: pod CIDR matches Calico's default pool" 'podSubnet: 192.168.0.0/16'

# --- cilium with CRDs ------------------------------------------------------------------------
fresh
run "$hack/kind-up.sh" cilium --npa-crds || { fail "kind-up.sh cilium --npa-crds exits 0"; cat "$tmp/out"; }
called "cilium: Helm install of the pinned chart" '^helm upgrade --install cilium cilium --repo https://helm.cilium.io .*--version 1.18.0'
called "cilium: SCTP enabled" 'sctp.enabled=true'
called "--npa-crds: v0.1.7 AdminNetworkPolicy CRD" 'refs/tags/v0.1.7/config/crd/experimental/policy.networking.k8s.io_adminnetworkpolicies.yaml'
called "--npa-crds: v0.1.7 BaselineAdminNetworkPolicy CRD" 'refs/tags/v0.1.7/config/crd/experimental/policy.networking.k8s.io_baselineadminnetworkpolicies.yaml'
called "--npa-crds: v0.2.0 ClusterNetworkPolicy CRD" 'refs/tags/v0.2.0/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml'
called "--npa-crds: waits until the CRDs are established" 'wait --for condition=established .*clusternetworkpolicies.policy.networking.k8s.io'

# --- bundled ---------------------------------------------------------------------------------
fresh
run "$hack/kind-up.sh" bundled || { fail "kind-up.sh bundled exits 0"; cat "$tmp/out"; }
called "bundled: policy-free kindnet" 'kindnet-cni=docker.io/kindest/kindnetd'
called "bundled: loads the local enforcer image" '^kind load docker-image netpol-enforcer:dev --name netpol'
called "bundled: waits for the enforcer DaemonSet" 'rollout status daemonset/netpol-enforcer'
if grep -q 'image: netpol-enforcer:dev' "$STUB_LOG.applied" && grep -q 'imagePullPolicy: IfNotPresent' "$STUB_LOG.applied" &&
  ! grep -q 'ghcr.io/x/netpol-enforcer' "$STUB_LOG.applied"; then
  pass "bundled: applies the enforcer with the local image and IfNotPresent"
else
  fail "bundled: applies the enforcer with the local image and IfNotPresent"
fi
fresh
if STUB_MISSING_IMAGE=netpol-enforcer:dev run "$hack/kind-up.sh" bundled; then
  fail "bundled without the enforcer image fails"
else
  said "bundled without the enforcer image fails, naming how to build it" "hack/kind-images.sh enforcer"
  not_called "bundled without the image creates no cluster" '^kind create cluster'
fi

# --- usage -----------------------------------------------------------------------------------
fresh
if run "$hack/kind-up.sh" flannel; then fail "kind-up.sh rejects an unknown implementation"; else
  pass "kind-up.sh rejects an unknown implementation"; fi
if run "$hack/kind-run.sh" --expect maybe; then fail "kind-run.sh rejects an unknown --expect"; else
  pass "kind-run.sh rejects an unknown --expect"; fi
if run "$hack/kind-run.sh"; then fail "kind-run.sh without a cluster fails"; else
  said "kind-run.sh without a cluster fails, naming kind-up.sh" "hack/kind-up.sh"; fi

if [[ $failed -ne 0 ]]; then
  echo "kind-scripts-test: some checks failed" >&2
  exit 1
fi
echo "kind-scripts-test: all checks passed"
