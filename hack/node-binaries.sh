#!/usr/bin/env bash
# Provide what a real node runs — kubelet, kube-proxy, containerd, containerd-shim-runc-v2,
# ctr, crictl, agnhost and pause — and print the directory that holds them.
#
#   hack/node-binaries.sh              # prints the bin directory (builds once, then instant)
#   NETPOL_NODE_BIN_DIR=/opt/node/bin hack/node-binaries.sh   # use prebuilt binaries
#
# Order of sources:
#   1. $NETPOL_NODE_BIN_DIR, when set (must hold all eight);
#   2. the cache, ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/node/<versions>;
#   3. a build from the Go modules, written into the cache:
#      - kubelet, kube-proxy, agnhost: k8s.io/kubernetes at the control plane's version, the same
#        throwaway go.mod as hack/control-plane.sh (hack/lib/k8s-modules.sh);
#      - containerd, containerd-shim-runc-v2, ctr: github.com/containerd/containerd/v2,
#        CGO_ENABLED=0 with the tags no_btrfs no_devmapper no_zfs (no graph drivers needing C);
#      - crictl: sigs.k8s.io/cri-tools;
#      - pause: build/pause/linux/pause.c from the k8s.io/kubernetes module zip, gcc -Os -static.
#
# runc, the CNI plugins and busybox-static come from Debian packages (hack/setup.sh).
# Versions known to build here with Go 1.26: Kubernetes v1.37.2, containerd v2.4.2, cri-tools v1.37.0.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib/k8s-modules.sh
source "$here/lib/k8s-modules.sh"
# shellcheck source=lib/cache.sh
source "$here/lib/cache.sh"

K8S_VERSION="${NETPOL_K8S_VERSION:-v1.37.2}"
CONTAINERD_VERSION="${NETPOL_CONTAINERD_VERSION:-v2.4.2}"
CRICTL_VERSION="${NETPOL_CRICTL_VERSION:-v1.37.0}"
BINARIES=(kubelet kube-proxy agnhost containerd containerd-shim-runc-v2 ctr crictl pause)

log() { printf 'node-binaries: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

bin_dir="$(netpol_cache_root)/node/k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-crictl-$CRICTL_VERSION"
# Exits here with the directory when it is given or cached; sets $staging otherwise.
cached_or_staging NETPOL_NODE_BIN_DIR "$bin_dir" "${BINARIES[@]}"

command -v go >/dev/null || die "go is not installed; install Go or set NETPOL_NODE_BIN_DIR"
command -v gcc >/dev/null || die "gcc is not installed (pause is built from C)"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local

log "building kubelet, kube-proxy and agnhost from k8s.io/kubernetes@$K8S_VERSION"
k8s_module_dir "$staging/k8s" "$K8S_VERSION" \
  k8s.io/kubernetes/cmd/kubelet/app \
  k8s.io/kubernetes/cmd/kube-proxy/app \
  k8s.io/kubernetes/test/images/agnhost/netexec
(cd "$staging/k8s" && go build -trimpath -ldflags "$(k8s_ldflags "$K8S_VERSION")" -o "$staging/bin/" \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/test/images/agnhost)

log "building pause from k8s.io/kubernetes@$K8S_VERSION build/pause/linux/pause.c"
pause_src="$(cd "$staging/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
[[ -f "$pause_src" ]] || die "no $pause_src"
gcc -Os -static -Wall -Werror -DVERSION="${K8S_VERSION}-netpol" -o "$staging/bin/pause" "$pause_src"
strip "$staging/bin/pause"

log "building containerd $CONTAINERD_VERSION"
go_tools_module "$staging/containerd" containerd "require github.com/containerd/containerd/v2 $CONTAINERD_VERSION" \
  github.com/containerd/containerd/v2/cmd/containerd/builtins
(cd "$staging/containerd" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
  -o "$staging/bin/" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
  github.com/containerd/containerd/v2/cmd/ctr)

log "building crictl $CRICTL_VERSION"
go_tools_module "$staging/crictl" crictl "require sigs.k8s.io/cri-tools $CRICTL_VERSION" \
  sigs.k8s.io/cri-tools/pkg/version
(cd "$staging/crictl" && go build -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
  -o "$staging/bin/" sigs.k8s.io/cri-tools/cmd/crictl)

publish_staged "$bin_dir" "${BINARIES[@]}"
