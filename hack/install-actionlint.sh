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
# shellcheck source=lib/cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cache.sh"

version="${ACTIONLINT_VERSION:-v1.7.12}"

log() { printf 'install-actionlint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck disable=SC2317  # called by found_or_cached
version_ok() { [[ "$("$1" -version 2>/dev/null | head -n 1)" == "$version" ]]; }
dir="$(netpol_cache_root)/tools/actionlint-$version"
# Exits here with the path when it is on PATH or cached.
found_or_cached actionlint "$dir" version_ok

command -v go >/dev/null 2>&1 ||
  die "actionlint $version is not installed and Go is missing to build it; install Go, or put actionlint $version on PATH"
mkdir -p "$dir"
log "installing actionlint $version into $dir"
GOBIN="$dir" go install "github.com/rhysd/actionlint/cmd/actionlint@$version" ||
  die "go install github.com/rhysd/actionlint/cmd/actionlint@$version failed"
[[ -x "$dir/actionlint" ]] || die "go install finished but $dir/actionlint is missing"
printf '%s\n' "$dir/actionlint"
