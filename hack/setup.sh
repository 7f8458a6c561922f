#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs before the suite can run here: the kernel tools
# the local cluster and the enforcer drive, and the control-plane binaries (built once from their
# Go modules and cached outside the repository). Idempotent; the second call is quick.
#
#   hack/setup.sh                         # prints nothing but progress; exports nothing
#   NETPOL_SETUP_NODES=1 hack/setup.sh    # also the real-node binaries (hack/node-binaries.sh)
#
# Real nodes (`local up --runtime kubelet`) also need runc, the CNI plugins, busybox-static (the
# agnhost image's shell) and umoci + skopeo (hack/node-images.sh builds the images with them);
# they are installed here too, only when missing.
#
# Needs root (apt-get), Go (to build the control plane once) and a Rust toolchain.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
  log "error: run as root (apt-get, network namespaces, iptables)"
  exit 1
fi

# command → Debian package
declare -A packages=(
  [iptables]=iptables
  [nft]=nftables
  [conntrack]=conntrack
  [ipset]=ipset
  [ip]=iproute2
  [shellcheck]=shellcheck
  [openssl]=openssl
  [flock]=util-linux
  # The HTML report's browser tests render it in headless Chromium.
  [chromium]=chromium
)
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${packages[$cmd]}")
done
# Real nodes: packages whose files are not commands on PATH are checked with dpkg.
for pkg in runc containernetworking-plugins busybox-static umoci skopeo; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
# check-manifests.sh renders the plugin's Pod with PyYAML.
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
  # python3 may not be Debian's (pyenv); give it PyYAML from PyPI.
  log "installing PyYAML for $(command -v python3)"
  python3 -m pip install --quiet 'PyYAML==6.0.2'
fi

command -v cargo >/dev/null || { log "error: cargo is not installed (https://rustup.rs)"; exit 1; }

bin_dir="$(hack/control-plane.sh)"
log "control plane: $bin_dir"
if [[ "${NETPOL_SETUP_NODES:-0}" == 1 ]]; then
  node_dir="$(hack/node-binaries.sh)"
  log "node binaries: $node_dir"
fi
