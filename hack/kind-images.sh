#!/usr/bin/env bash
# Build the container images the kind scripts load.
#
#   hack/kind-images.sh [suite] [enforcer]     # both when none is named
#
#   suite     plugin/Containerfile   -> $NETPOL_SUITE_IMAGE    (default netpol-conformance:dev)
#   enforcer  enforcer/Containerfile -> $NETPOL_ENFORCER_IMAGE (default netpol-enforcer:dev)
# Uses $DOCKER (default docker; podman works too) with the repository root as build context.
set -euo pipefail

# shellcheck source=kind/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/kind/common.sh"

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(suite enforcer)
fi

need "$DOCKER" "to build images"
for target in "${targets[@]}"; do
  case "$target" in
    suite) file=plugin/Containerfile image=$NETPOL_SUITE_IMAGE ;;
    enforcer) file=enforcer/Containerfile image=$NETPOL_ENFORCER_IMAGE ;;
    *) die "unknown image '$target' (expected suite or enforcer)" ;;
  esac
  [[ -f "$REPO_ROOT/$file" ]] || die "$file does not exist; cannot build $image"
  log "building $image from $file"
  "$DOCKER" build -f "$REPO_ROOT/$file" -t "$image" "$REPO_ROOT" || die "building $image from $file failed"
done
