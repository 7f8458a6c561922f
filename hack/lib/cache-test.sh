#!/usr/bin/env bash
# Hermetic self-check of hack/lib/cache.sh (run by hack/lint.sh): a fake "build" of two
# binaries into a temporary cache: built once and published, then found in the cache, a given
# directory used as it is, and one that lacks a binary refused.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The way control-plane.sh uses the library, with a build that counts its runs.
cat >"$work/build.sh" <<SCRIPT
set -euo pipefail
log() { printf 'build: %s\n' "\$*" >&2; }
die() { log "error: \$*"; exit 1; }
source "$here/cache.sh"
bin_dir="\$(netpol_cache_root)/tools/v1"
cached_or_staging FAKE_BIN_DIR "\$bin_dir" one two
echo built >>"$work/builds"
for b in one two; do printf '#!/bin/sh\n' >"\$staging/bin/\$b"; chmod +x "\$staging/bin/\$b"; done
publish_staged "\$bin_dir" one two
SCRIPT

fail() { echo "cache-test: $*" >&2; exit 1; }
export NETPOL_CACHE_DIR="$work/cache"
first="$(bash "$work/build.sh" 2>/dev/null)"
[[ $first == "$work/cache/tools/v1" ]] || fail "first run printed '$first'"
[[ -x $first/one && -x $first/two ]] || fail "the binaries were not published"
second="$(bash "$work/build.sh" 2>/dev/null)"
[[ $second == "$first" ]] || fail "second run printed '$second'"
[[ $(wc -l <"$work/builds") -eq 1 ]] || fail "the cached binaries were built again"
compgen -G "$work/cache/tools/.build.*" >/dev/null && fail "a staging directory was left behind"
given="$(FAKE_BIN_DIR="$first" bash "$work/build.sh" 2>/dev/null)"
[[ $given == "$first" ]] || fail "a given directory printed '$given'"
mkdir "$work/half" && cp "$first/one" "$work/half/"
if err="$(FAKE_BIN_DIR="$work/half" bash "$work/build.sh" 2>&1)"; then
  fail "a given directory without 'two' was accepted"
fi
[[ $err == *"FAKE_BIN_DIR=$work/half lacks one of: one two"* ]] || fail "unclear refusal: $err"
echo "cache-test: ok"
