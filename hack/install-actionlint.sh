#!/usr/bin/env bash
# Provide actionlint (the GitHub Actions workflow checker) at a pinned version and print its path.
#
#   hack/install-actionlint.sh        # prints e.g. ~/.cache/netpol-conformance/tools/actionlint-v1.7.12/actionlint
#
# Order: `actionlint` of exactly that version on PATH; the cache
# ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/tools/actionlint-<version>/;
# else `go install github.com/rhysd/actionlint/cmd/actionlint@<version>` into that cache (through
# the Go module proxy; needs Go). Nothing is written inside the repository.
set -euo pipefail

version="${ACTIONLINT_VERSION:-v1.7.12}"

log() { printf 'install-actionlint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if command -v actionlint >/dev/null 2>&1; then
  found="$(command -v actionlint)"
  if [[ "$("$found" -version 2>/dev/null | head -n 1)" == "$version" ]]; then
    printf '%s\n' "$found"
    exit 0
  fi
fi

cache_root="${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}"
dir="$cache_root/tools/actionlint-$version"
if [[ -x "$dir/actionlint" ]]; then
  printf '%s\n' "$dir/actionlint"
  exit 0
fi

command -v go >/dev/null 2>&1 ||
  die "actionlint $version is not installed and Go is missing to build it; install Go, or put actionlint $version on PATH"
mkdir -p "$dir"
log "installing actionlint $version into $dir"
GOBIN="$dir" go install "github.com/rhysd/actionlint/cmd/actionlint@$version" ||
  die "go install github.com/rhysd/actionlint/cmd/actionlint@$version failed"
[[ -x "$dir/actionlint" ]] || die "go install finished but $dir/actionlint is missing"
printf '%s\n' "$dir/actionlint"
