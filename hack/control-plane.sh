#!/usr/bin/env bash
# Provide etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl of a
# pinned Kubernetes version, and print the directory that holds them.
#
#   hack/control-plane.sh            # prints the bin directory (builds once, then instant)
#   NETPOL_CONTROL_PLANE_DIR=/opt/k8s/bin hack/control-plane.sh   # use prebuilt binaries
#
# Order of sources:
#   1. $NETPOL_CONTROL_PLANE_DIR, when set (must hold all five binaries);
#   2. the cache, ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/control-plane/<version>;
#   3. a build from the Go modules (k8s.io/kubernetes with every staging module replaced by
#      the matching v0.X.Y, see hack/lib/k8s-modules.sh; etcd from go.etcd.io/etcd/server/v3),
#      written into the cache;
#   4. with NETPOL_DOWNLOAD=1, the official release binaries (where the internet is reachable).
#
# Versions known to build here with Go 1.26: Kubernetes v1.37.2 with etcd v3.6.16.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/k8s-modules.sh
source "$here/lib/k8s-modules.sh"
# shellcheck source=lib/cache.sh
source "$here/lib/cache.sh"

K8S_VERSION="${NETPOL_K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${NETPOL_ETCD_VERSION:-v3.6.16}"
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)

log() { printf 'control-plane: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

bin_dir="$(netpol_cache_root)/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
# Exits here with the directory when it is given or cached; sets $staging otherwise.
cached_or_staging NETPOL_CONTROL_PLANE_DIR "$bin_dir" "${BINARIES[@]}"

download_release() {
  local arch base
  arch="$(go env GOARCH 2>/dev/null || echo amd64)"
  base="https://dl.k8s.io/release/$K8S_VERSION/bin/linux/$arch"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    curl -fsSL --retry 3 -o "$staging/bin/$b" "$base/$b"
  done
  curl -fsSL --retry 3 "https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION/etcd-$ETCD_VERSION-linux-$arch.tar.gz" |
    tar -xz -C "$staging/bin" --strip-components=1 "etcd-$ETCD_VERSION-linux-$arch/etcd"
  chmod +x "$staging/bin/"*
}

build_from_modules() {
  command -v go >/dev/null || die "go is not installed; install Go or set NETPOL_CONTROL_PLANE_DIR"
  export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

  log "building Kubernetes $K8S_VERSION from its Go modules; this takes a while once"
  local k8s="$staging/k8s"
  k8s_module_dir "$k8s" "$K8S_VERSION" k8s.io/kubernetes/cmd/kube-apiserver/app
  (cd "$k8s" && go build -trimpath -ldflags "$(k8s_ldflags "$K8S_VERSION")" -o "$staging/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)

  log "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3"
  local etcd="$staging/etcd"
  go_tools_module "$etcd" etcd "require go.etcd.io/etcd/server/v3 $ETCD_VERSION" go.etcd.io/etcd/server/v3/etcdmain
  (cd "$etcd" && go build -trimpath -ldflags "-s -w" -o "$staging/bin/etcd" go.etcd.io/etcd/server/v3)
}

if [[ "${NETPOL_DOWNLOAD:-0}" == 1 ]]; then
  download_release
else
  build_from_modules
fi
publish_staged "$bin_dir" "${BINARIES[@]}"
