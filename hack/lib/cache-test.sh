#!/usr/bin/env bash
# Hermetic self-check of hack/lib/cache.sh (run by hack/lint.sh): a fake "build" of two
# binaries into a temporary cache: built once and published, then found in the cache, a given
# directory used as it is, and one that lacks a binary refused; a fake suite built once by
# build_once, with Go's build settings; a fake tool found on PATH or in the cache.
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

# The way upstream-e2e.sh uses build_once (a stand-in `go` on PATH: nothing is compiled).
mkdir -p "$work/path"
printf '#!/bin/sh\n' >"$work/path/go" && chmod +x "$work/path/go"
cat >"$work/suite.sh" <<SCRIPT
set -euo pipefail
log() { printf 'suite: %s\\n' "\$*" >&2; }
die() { log "error: \$*"; exit 1; }
source "$here/cache.sh"
ready() { [[ -s "\$1/suite" ]]; }
build() { echo "\$CGO_ENABLED \$GOFLAGS \$2" >"\$1/suite"; echo built >>"$work/suite-builds"; }
dir="\$(netpol_cache_root)/upstream/suite-v1"
build_once "\$dir" ready build v1
build_once "\$dir" ready build v1
cat "\$dir/suite"
SCRIPT
said="$(PATH="$work/path:$PATH" bash "$work/suite.sh" 2>/dev/null)"
[[ $said == "0 -mod=mod v1" ]] || fail "build_once's build saw '$said'"
PATH="$work/path:$PATH" bash "$work/suite.sh" >/dev/null 2>&1
[[ $(wc -l <"$work/suite-builds") -eq 1 ]] || fail "build_once built a ready suite again"
compgen -G "$work/cache/upstream/.build.*" >/dev/null && fail "build_once left a staging directory behind"

# The way install-actionlint.sh uses found_or_cached.
cat >"$work/tool.sh" <<SCRIPT
set -euo pipefail
source "$here/cache.sh"
version_ok() { [[ "\$("\$1")" == v2 ]]; }
found_or_cached faketool "$work/tooldir" version_ok
echo missing
SCRIPT
mkdir -p "$work/tooldir" "$work/onpath" "$work/oldpath"
printf '#!/bin/sh\necho v2\n' >"$work/tooldir/faketool" && chmod +x "$work/tooldir/faketool"
printf '#!/bin/sh\necho v2\n' >"$work/onpath/faketool" && chmod +x "$work/onpath/faketool"
printf '#!/bin/sh\necho v1\n' >"$work/oldpath/faketool" && chmod +x "$work/oldpath/faketool"
[[ $(PATH="$work/onpath:$PATH" bash "$work/tool.sh") == "$work/onpath/faketool" ]] ||
  fail "a tool of the right version on PATH was not taken"
[[ $(PATH="$work/oldpath:$PATH" bash "$work/tool.sh") == "$work/tooldir/faketool" ]] ||
  fail "a tool of another version on PATH was taken, or the cached one was not"
rm "$work/tooldir/faketool"
[[ $(bash "$work/tool.sh") == missing ]] || fail "found_or_cached found a tool that is nowhere"
echo "cache-test: ok"
