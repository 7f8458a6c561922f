#!/usr/bin/env bash
# Create a kind cluster (1 control plane + 2 workers) with a chosen NetworkPolicy implementation.
#
#   hack/kind-up.sh <none|calico|cilium|bundled> [--npa-crds] [--name NAME]
#
#   none      kindnet pinned to an image without policy support: the CNI connects pods and
#             enforces nothing, so every case that expects a denial must fail.
#   calico    Calico ($CALICO_VERSION, manifest install) instead of kindnet.
#   cilium    Cilium ($CILIUM_VERSION, Helm chart) instead of kindnet.
#   bundled   the policy-free kindnet plus this repository's netpol-enforcer DaemonSet: image
#             $NETPOL_ENFORCER_IMAGE (from enforcer/Containerfile, see hack/kind-images.sh),
#             loaded with `kind load docker-image`, manifests from enforcer/deploy/*.yaml.
#   --npa-crds  install the network-policy-api CRDs: AdminNetworkPolicy and
#             BaselineAdminNetworkPolicy (v1alpha1, $NPA_V1ALPHA1_VERSION) and
#             ClusterNetworkPolicy (v1alpha2, $NPA_V1ALPHA2_VERSION), channel $NPA_CHANNEL.
#   --name    cluster name (default $KIND_CLUSTER_NAME, i.e. netpol); kubectl context kind-NAME.
#
# The suite image $NETPOL_SUITE_IMAGE is loaded too when it exists locally, so
# `hack/kind-run.sh --mode plugin` can run it without a registry.
# Needs: kind ($KIND_VERSION), kubectl, docker; helm for cilium. Downloads manifests and
# charts from the internet (written for GitHub Actions runners).
set -euo pipefail

# shellcheck source=kind/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/kind/common.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

impl=""
npa_crds=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    none | calico | cilium | bundled)
      [[ -z "$impl" ]] || die "implementation given twice: $impl and $1"
      impl=$1
      ;;
    --npa-crds) npa_crds=1 ;;
    --name)
      [[ $# -ge 2 ]] || die "--name needs a value"
      KIND_CLUSTER_NAME=$2
      shift
      ;;
    --name=*) KIND_CLUSTER_NAME=${1#--name=} ;;
    -h | --help) usage ;;
    *) die "unknown argument '$1' (expected none, calico, cilium, bundled, --npa-crds or --name NAME)" ;;
  esac
  shift
done
[[ -n "$impl" ]] || usage

need "$KIND" "to create the cluster (kind $KIND_VERSION)"
need "$KUBECTL" "to configure the cluster"
need "$DOCKER" "to run kind's nodes and load images"
if [[ "$impl" == cilium ]]; then
  need "$HELM" "to install Cilium"
fi
if cluster_exists; then
  die "kind cluster '$KIND_CLUSTER_NAME' already exists; delete it with hack/kind-down.sh --name $KIND_CLUSTER_NAME or choose --name"
fi

image_present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
if [[ "$impl" == bundled ]]; then
  image_present "$NETPOL_ENFORCER_IMAGE" ||
    die "image $NETPOL_ENFORCER_IMAGE not found locally; build it with hack/kind-images.sh enforcer"
  compgen -G "$REPO_ROOT/enforcer/deploy/*.yaml" >/dev/null ||
    die "no manifests in $REPO_ROOT/enforcer/deploy/*.yaml to deploy the bundled enforcer"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- cluster ----------------------------------------------------------------------------------
disable_default_cni=false
pod_subnet=10.244.0.0/16
case "$impl" in
  calico)
    disable_default_cni=true
    # Calico's default IPv4 pool; the pool and the cluster's pod CIDR must agree.
    pod_subnet=192.168.0.0/16
    ;;
  cilium) disable_default_cni=true ;;
esac

cat >"$tmp/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: $disable_default_cni
  podSubnet: $pod_subnet
nodes:
  - role: control-plane
  - role: worker
  - role: worker
YAML

create_args=(create cluster --name "$KIND_CLUSTER_NAME" --config "$tmp/kind.yaml")
if [[ -n "$KIND_NODE_IMAGE" ]]; then
  create_args+=(--image "$KIND_NODE_IMAGE")
fi
log "creating kind cluster '$KIND_CLUSTER_NAME' for '$impl'"
"$KIND" "${create_args[@]}" || die "kind create cluster failed"

# --- policy implementation -------------------------------------------------------------------
install_policy_free_kindnet() {
  log "pinning kindnet to $KINDNET_NO_POLICY_IMAGE (no NetworkPolicy support)"
  kctx -n kube-system set image daemonset/kindnet "kindnet-cni=$KINDNET_NO_POLICY_IMAGE" ||
    die "could not change the kindnet image; does this kind version still name its DaemonSet kindnet?"
  kctx -n kube-system rollout status daemonset/kindnet --timeout="$NETPOL_KIND_TIMEOUT" ||
    die "kindnet with $KINDNET_NO_POLICY_IMAGE did not become ready"
}

install_calico() {
  local url="https://raw.githubusercontent.com/projectcalico/calico/$CALICO_VERSION/manifests/calico.yaml"
  log "installing Calico $CALICO_VERSION from $url"
  # Server-side apply: Calico's CRDs are too large for the last-applied annotation.
  kctx apply --server-side -f "$url" || die "could not apply $url"
  # kind nodes use loose reverse-path filtering, which Felix refuses by default.
  kctx -n kube-system set env daemonset/calico-node FELIX_IGNORELOOSERPF=true ||
    die "could not configure calico-node"
  kctx -n kube-system rollout status daemonset/calico-node --timeout="$NETPOL_KIND_TIMEOUT" ||
    die "calico-node did not become ready"
  kctx -n kube-system rollout status deployment/calico-kube-controllers --timeout="$NETPOL_KIND_TIMEOUT" ||
    die "calico-kube-controllers did not become ready"
}

install_cilium() {
  log "installing Cilium $CILIUM_VERSION with Helm"
  # identityChangeGracePeriod=0s: apply relabelled pods' policies at once (the upstream
  # NetworkPolicy e2e relabels pods and namespaces and probes right after).
  "$HELM" upgrade --install cilium cilium --repo https://helm.cilium.io \
    --kube-context "kind-$KIND_CLUSTER_NAME" --namespace kube-system \
    --version "$CILIUM_VERSION" \
    --set image.pullPolicy=IfNotPresent \
    --set ipam.mode=kubernetes \
    --set sctp.enabled=true \
    --set identityChangeGracePeriod=0s \
    --wait --timeout "$NETPOL_KIND_TIMEOUT" ||
    die "helm install of Cilium $CILIUM_VERSION failed"
  kctx -n kube-system rollout status daemonset/cilium --timeout="$NETPOL_KIND_TIMEOUT" ||
    die "the cilium DaemonSet did not become ready"
  kctx -n kube-system rollout status deployment/cilium-operator --timeout="$NETPOL_KIND_TIMEOUT" ||
    die "cilium-operator did not become ready"
}

install_npa_crds() {
  local url crd
  while IFS= read -r url; do
    log "installing CRD $url"
    kctx apply --server-side -f "$url" || die "could not apply $url"
  done < <(npa_crd_urls)
  for crd in adminnetworkpolicies baselineadminnetworkpolicies clusternetworkpolicies; do
    kctx wait --for condition=established --timeout="$NETPOL_KIND_TIMEOUT" \
      "customresourcedefinition/$crd.policy.networking.k8s.io" ||
      die "CRD $crd.policy.networking.k8s.io was not established"
  done
}

# The enforcer's manifests name its published image; point them at the locally built one.
# enforcer/deploy is a kustomization when it has kustomization.yaml (rendered with
# `kubectl kustomize`), else a directory of plain manifests.
render_enforcer_manifests() {
  local out=$1 dir="$REPO_ROOT/enforcer/deploy" f
  if [[ -f "$dir/kustomization.yaml" ]]; then
    "$KUBECTL" kustomize "$dir" >"$tmp/enforcer-raw.yaml" || die "kubectl kustomize $dir failed"
  else
    : >"$tmp/enforcer-raw.yaml"
    for f in "$dir"/*.yaml; do
      printf -- '---\n' >>"$tmp/enforcer-raw.yaml"
      cat "$f" >>"$tmp/enforcer-raw.yaml"
    done
  fi
  sed -E \
    -e "s#^([[:space:]]*(- )?image:[[:space:]]*)[\"']?[^\"'[:space:]]*netpol-enforcer[^\"'[:space:]]*[\"']?#\1$NETPOL_ENFORCER_IMAGE#" \
    -e 's#^([[:space:]]*imagePullPolicy:[[:space:]]*)Always#\1IfNotPresent#' \
    "$tmp/enforcer-raw.yaml" >"$out"
  grep -qE "image:[[:space:]]*$NETPOL_ENFORCER_IMAGE\$" "$out" ||
    die "no 'image: ...netpol-enforcer...' line in enforcer/deploy to point at $NETPOL_ENFORCER_IMAGE"
}

install_bundled_enforcer() {
  log "loading $NETPOL_ENFORCER_IMAGE into the cluster"
  "$KIND" load docker-image "$NETPOL_ENFORCER_IMAGE" --name "$KIND_CLUSTER_NAME" ||
    die "kind load docker-image $NETPOL_ENFORCER_IMAGE failed"
  render_enforcer_manifests "$tmp/enforcer.yaml"
  log "applying enforcer/deploy/*.yaml with image $NETPOL_ENFORCER_IMAGE"
  kctx apply -f "$tmp/enforcer.yaml" || die "could not apply enforcer/deploy/*.yaml"
  local listed ns name
  listed="$(kctx get -f "$tmp/enforcer.yaml" \
    -o jsonpath='{range .items[?(@.kind=="DaemonSet")]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}')" ||
    die "could not read back the objects of enforcer/deploy/*.yaml"
  [[ -n "$listed" ]] || die "enforcer/deploy/*.yaml holds no DaemonSet"
  while read -r ns name; do
    kctx -n "$ns" rollout status "daemonset/$name" --timeout="$NETPOL_KIND_TIMEOUT" ||
      die "DaemonSet $ns/$name of the bundled enforcer did not become ready"
  done <<<"$listed"
}

case "$impl" in
  none) install_policy_free_kindnet ;;
  calico) install_calico ;;
  cilium) install_cilium ;;
  bundled) install_policy_free_kindnet ;;
esac
if [[ $npa_crds -eq 1 ]]; then
  install_npa_crds
fi
if [[ "$impl" == bundled ]]; then
  install_bundled_enforcer
fi

# --- images and readiness --------------------------------------------------------------------
if image_present "$NETPOL_SUITE_IMAGE"; then
  log "loading $NETPOL_SUITE_IMAGE into the cluster"
  "$KIND" load docker-image "$NETPOL_SUITE_IMAGE" --name "$KIND_CLUSTER_NAME" ||
    die "kind load docker-image $NETPOL_SUITE_IMAGE failed"
else
  log "image $NETPOL_SUITE_IMAGE not found locally; plugin mode needs it (hack/kind-images.sh suite)"
fi

kctx wait --for=condition=Ready nodes --all --timeout="$NETPOL_KIND_TIMEOUT" ||
  die "not every node became Ready"
kctx -n kube-system rollout status deployment/coredns --timeout="$NETPOL_KIND_TIMEOUT" ||
  die "CoreDNS did not become ready"

# Record what this cluster runs, for kind-run.sh's JUnit properties and for humans.
kctx -n kube-system create configmap netpol-kind-info \
  --from-literal=implementation="$impl" --from-literal=npa-crds="$npa_crds" \
  --dry-run=client -o yaml | kctx apply -f - >/dev/null ||
  die "could not record the cluster's implementation in kube-system/netpol-kind-info"

log "cluster '$KIND_CLUSTER_NAME' is ready with '$impl' (kubectl context kind-$KIND_CLUSTER_NAME)"
log "run the suite: hack/kind-run.sh --name $KIND_CLUSTER_NAME --junit-dir _artifacts/junit"
