#!/usr/bin/env bash
# Build the container images real nodes run, under their upstream names, as docker-archive
# tarballs that `ctr -n k8s.io images import` accepts, and print the directory that holds them.
# No registry and no daemon: each image is one layer made from a directory tree by umoci
# (`umoci insert`) and written as a docker-archive by skopeo (Debian packages umoci, skopeo).
#
#   hack/node-images.sh          # prints the image directory (rebuilds only what changed)
#
# Images (file name → image name):
#   pause.tar       registry.k8s.io/pause:3.10.2                      static pause (hack/node-binaries.sh)
#   agnhost.tar     registry.k8s.io/e2e-test-images/agnhost:2.66.1    static agnhost + busybox-static
#                                                                     with its applet links (sh -c works)
#   enforcer.tar    the image of enforcer/deploy/daemonset.yaml       netpol-enforcer + iptables, nft
#   conformance.tar the image of plugin/netpol-conformance.yaml       netpol-conformance + bash (the
#                                                                     Sonobuoy entrypoint) + busybox
#   sonobuoy.tar    $NETPOL_SONOBUOY_IMAGE, only when $NETPOL_SONOBUOY_BIN is set (for
#                   hack/sonobuoy-local.sh): that sonobuoy binary alone at /sonobuoy, as
#                   upstream's image has it on a static base
# The project's two images carry the release binaries: $NETPOL_RELEASE_DIR (holding netpol-enforcer
# and netpol-conformance), else ${CARGO_TARGET_DIR:-target}/release, built with cargo when absent.
# Dynamically linked programs are copied with the libraries `ldd` names, so the images run the
# same glibc, iptables and nftables as this machine (the Containerfiles use Debian's too).
#
# Cache: ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/images; each
# tarball sits beside a .inputs file (hashes of what went in) and is rebuilt when that changes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PAUSE_IMAGE="registry.k8s.io/pause:3.10.2"
AGNHOST_IMAGE="registry.k8s.io/e2e-test-images/agnhost:2.66.1"

log() { printf 'node-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in umoci skopeo ldd sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is not installed (hack/setup.sh installs umoci and skopeo)"
done
busybox=/bin/busybox
if [[ ! -x $busybox ]] || ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is missing or not static (apt-get install busybox-static)"
fi

# The image a manifest names in its first `image:` line.
manifest_image() {
  sed -n 's/^[[:space:]]*image:[[:space:]]*\([^[:space:]]*\).*/\1/p' "$1" | head -n1
}
ENFORCER_IMAGE="$(manifest_image "$root/enforcer/deploy/daemonset.yaml")"
CONFORMANCE_IMAGE="$(manifest_image "$root/plugin/netpol-conformance.yaml")"
[[ -n $ENFORCER_IMAGE && -n $CONFORMANCE_IMAGE ]] || die "could not read the image names from the manifests"

node_bin="$("$root/hack/node-binaries.sh")"
release="${NETPOL_RELEASE_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}"
if [[ -z "${NETPOL_RELEASE_DIR:-}" ]]; then
  log "building the release binaries into $release (cargo build --release)"
  (cd "$root" && cargo build --release --locked -q -p netpol-enforcer -p netpol-conformance --bins)
fi
for b in netpol-enforcer netpol-conformance; do
  [[ -x "$release/$b" ]] || die "$release/$b is missing"
done

cache_root="${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}"
out="$cache_root/images"
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

# Copies a program and every library ldd resolves for it into the tree ROOT, at the same paths.
# The project's own binaries lose their debug info on the way (the release profile keeps line
# tables, which only a debugger needs).
add_program() {
  local tree=$1 src=$2 dest=${3:-$2} lib
  install -D -m 0755 "$(readlink -f "$src")" "$tree$dest"
  if [[ $(basename "$src") == netpol-* ]]; then strip --strip-debug "$tree$dest"; fi
  while read -r lib; do
    [[ -e "$tree$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$tree$lib"
  done < <(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
}

# busybox-static at /bin/busybox with a link per applet in /bin (never over an existing file).
add_busybox() {
  local tree=$1 applet
  install -D -m 0755 "$busybox" "$tree/bin/busybox"
  for applet in $("$busybox" --list); do
    [[ -e "$tree/bin/$applet" ]] || ln -s busybox "$tree/bin/$applet"
  done
}

# build NAME IMAGE TREE_FN CONFIG_ARGS...: TREE_FN fills a directory; the image gets it as its
# single layer and CONFIG_ARGS as `umoci config` flags. Skipped when the inputs are unchanged.
build() {
  local name=$1 image=$2 fill=$3
  shift 3
  local work tree inputs
  work="$(mktemp -d "$out/.build-$name.XXXXXX")"
  tree="$work/tree"
  mkdir -p "$tree"
  "$fill" "$tree"
  inputs="$( (cd "$tree" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
    printf '%s\n' "$image" "$@"; sha256sum "${BASH_SOURCE[0]}")"
  inputs="$(printf '%s\n' "$inputs" | sha256sum | cut -d' ' -f1)"
  if [[ -f "$out/$name.tar" && "$(cat "$out/$name.inputs" 2>/dev/null)" == "$inputs" ]]; then
    rm -rf "$work"
    return
  fi
  log "building $image ($name.tar)"
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:img"
  umoci insert --image "$work/oci:img" "$tree" /
  umoci config --image "$work/oci:img" "$@"
  rm -f "$out/$name.tar"
  skopeo copy --quiet "oci:$work/oci:img" "docker-archive:$out/$name.tar:$image"
  printf '%s\n' "$inputs" >"$out/$name.inputs"
  rm -rf "$work"
}

fill_pause() { install -D -m 0755 "$node_bin/pause" "$1/pause"; }
fill_agnhost() {
  install -D -m 0755 "$node_bin/agnhost" "$1/agnhost"
  add_busybox "$1"
  mkdir -p "$1/tmp" && chmod 1777 "$1/tmp"
}
fill_enforcer() {
  local p
  add_program "$1" "$release/netpol-enforcer" /usr/local/bin/netpol-enforcer
  # iptables-nft is one multi-call binary; its extensions are loaded at run time.
  add_program "$1" "$(command -v xtables-nft-multi)" /usr/sbin/xtables-nft-multi
  for p in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
    ln -sf xtables-nft-multi "$1/usr/sbin/$p"
  done
  # At their canonical path (/usr/lib/…/xtables, where iptables looks), with their libraries.
  local xt so
  xt="$(readlink -f "$(dirname "$(ldd "$(command -v xtables-nft-multi)" |
    grep -o '/[^ ]*libxtables[^ ]*' | head -n1)")")/xtables"
  [[ -d $xt ]] || die "no iptables extension directory $xt"
  for so in "$xt"/*.so; do add_program "$1" "$so"; done
  add_program "$1" "$(command -v nft)" /usr/sbin/nft
  for f in /etc/protocols /etc/services /etc/ethertypes; do
    [[ -f $f ]] && install -D -m 0644 "$f" "$1$f"
  done
  mkdir -p "$1/tmp" "$1/run" && chmod 1777 "$1/tmp"
}
fill_conformance() {
  add_program "$1" "$release/netpol-conformance" /usr/local/bin/netpol-conformance
  install -D -m 0755 "$root/plugin/sonobuoy-entrypoint.sh" "$1/usr/local/bin/sonobuoy-entrypoint"
  add_program "$1" "$(command -v bash)" /bin/bash
  add_busybox "$1"
  # The entrypoint's `#!/usr/bin/env bash`, as in the Debian image of plugin/Containerfile.
  install -d -m 0755 "$1/usr/bin"
  ln -s /bin/busybox "$1/usr/bin/env"
  install -d -m 0755 "$1/etc"
  printf 'root:x:0:0:root:/root:/bin/sh\nnetpol:x:65532:65532::/nonexistent:/usr/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnetpol:x:65532:\n' >"$1/etc/group"
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] &&
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$1/tmp" && chmod 1777 "$1/tmp"
}

build pause "$PAUSE_IMAGE" fill_pause --config.entrypoint /pause --config.user 65535:65535
build agnhost "$AGNHOST_IMAGE" fill_agnhost --config.entrypoint /agnhost --config.cmd pause \
  --config.env PATH=/bin
build enforcer "$ENFORCER_IMAGE" fill_enforcer --config.entrypoint /usr/local/bin/netpol-enforcer \
  --config.user 0 --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
build conformance "$CONFORMANCE_IMAGE" fill_conformance \
  --config.entrypoint /usr/local/bin/netpol-conformance --config.cmd run --config.user 65532:65532 \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin
if [[ -n ${NETPOL_SONOBUOY_BIN:-} ]]; then
  [[ -x $NETPOL_SONOBUOY_BIN ]] || die "NETPOL_SONOBUOY_BIN=$NETPOL_SONOBUOY_BIN is not a program"
  fill_sonobuoy() {
    install -D -m 0755 "$NETPOL_SONOBUOY_BIN" "$1/sonobuoy"
    mkdir -p "$1/tmp" && chmod 1777 "$1/tmp"
  }
  build sonobuoy "${NETPOL_SONOBUOY_IMAGE:?NETPOL_SONOBUOY_IMAGE names the sonobuoy image}" \
    fill_sonobuoy --config.entrypoint /sonobuoy --config.workingdir /
fi
printf '%s\n' "$out"
