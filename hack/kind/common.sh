# shellcheck shell=bash
# Shared settings and helpers of hack/kind-*.sh; sourced, never run.
#
# Every version is pinned here and can be overridden from the environment.

# kind and its default node image (kindest/node v1.35.x for kind v0.31.0). KIND_NODE_IMAGE
# overrides the node image; empty means kind's default for its version.
: "${KIND_VERSION:=v0.31.0}"
: "${KIND_NODE_IMAGE:=}"
: "${KIND_CLUSTER_NAME:=netpol}"
: "${KIND:=kind}"
: "${KUBECTL:=kubectl}"
: "${DOCKER:=docker}"
: "${HELM:=helm}"
: "${SONOBUOY:=sonobuoy}"

# Policy implementations.
: "${CALICO_VERSION:=v3.30.2}"
: "${CILIUM_VERSION:=1.18.0}"
# kindnet from kind >= v0.24 embeds a NetworkPolicy implementation. This older kindnetd has
# none; kube-network-policies' and network-policy-api's CI pin it for the same reason.
: "${KINDNET_NO_POLICY_IMAGE:=docker.io/kindest/kindnetd:v20230809-80a64d96}"

# network-policy-api CRDs: v1alpha1 AdminNetworkPolicy/BaselineAdminNetworkPolicy from the
# v0.1.7 release, v1alpha2 ClusterNetworkPolicy from v0.2.0. The experimental channel carries
# the optional features (named ports, node peers) that experimental cases need.
: "${NPA_V1ALPHA1_VERSION:=v0.1.7}"
: "${NPA_V1ALPHA2_VERSION:=v0.2.0}"
: "${NPA_CHANNEL:=experimental}"

# Locally built images (hack/kind-images.sh builds them).
: "${NETPOL_SUITE_IMAGE:=netpol-conformance:dev}"
: "${NETPOL_ENFORCER_IMAGE:=netpol-enforcer:dev}"

: "${NETPOL_KIND_TIMEOUT:=5m}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export REPO_ROOT

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need CMD WHAT-FOR: fail early, naming the missing tool and why it is needed.
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is not installed (needed $2)"
}

kctx() { "$KUBECTL" --context "kind-$KIND_CLUSTER_NAME" "$@"; }

cluster_exists() {
  local clusters
  clusters="$("$KIND" get clusters 2>/dev/null)" || die "'$KIND get clusters' failed; is docker running?"
  grep -qxF "$KIND_CLUSTER_NAME" <<<"$clusters"
}

npa_crd_urls() {
  local base=https://raw.githubusercontent.com/kubernetes-sigs/network-policy-api/refs/tags
  printf '%s\n' \
    "$base/$NPA_V1ALPHA1_VERSION/config/crd/$NPA_CHANNEL/policy.networking.k8s.io_adminnetworkpolicies.yaml" \
    "$base/$NPA_V1ALPHA1_VERSION/config/crd/$NPA_CHANNEL/policy.networking.k8s.io_baselineadminnetworkpolicies.yaml" \
    "$base/$NPA_V1ALPHA2_VERSION/config/crd/$NPA_CHANNEL/policy.networking.k8s.io_clusternetworkpolicies.yaml"
}
