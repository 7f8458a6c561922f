# shellcheck shell=bash
# Sourced by the scripts that provide tools and builds once in the cache outside the repository
# (hack/control-plane.sh, hack/node-binaries.sh, hack/upstream-e2e.sh,
# hack/upstream-conformance.sh, hack/sonobuoy-local.sh, hack/install-actionlint.sh,
# hack/install-hadolint.sh): one way to find, lock, stage and publish them.
#
#   netpol_cache_root                 # prints the cache root: $NETPOL_CACHE_DIR, else
#                                     # ${XDG_CACHE_HOME:-~/.cache}/netpol-conformance
#   has_binaries DIR NAME...          # whether DIR holds every NAME, executable
#   found_or_cached NAME DIR VERSION_OK
#                                     # when NAME on PATH passes `VERSION_OK PATH`, prints that
#                                     # path and exits 0; when DIR/NAME is executable, prints it
#                                     # and exits 0; otherwise returns
#   cached_or_staging ENV DIR NAME... # when the variable named ENV is set, prints it (dying when
#                                     # it lacks a NAME) and exits 0; when DIR has every NAME,
#                                     # prints DIR and exits 0. Otherwise takes DIR's build lock
#                                     # (a second caller waits, then finds DIR filled and exits
#                                     # the same way) and sets `staging` to a fresh directory
#                                     # beside DIR with an empty staging/bin, removed on exit
#   publish_staged DIR NAME...        # checks staging/bin has every NAME, puts it in DIR's
#                                     # place and prints DIR
#   build_once DIR READY BUILD ARG... # unless `READY DIR` succeeds, takes DIR's build lock in a
#                                     # subshell (a second caller waits, then finds DIR ready),
#                                     # runs `BUILD STAGING ARG...` with Go set for static,
#                                     # module-mode builds and puts STAGING in DIR's place
#
# The caller defines log() and die().

netpol_cache_root() {
  printf '%s\n' "${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}"
}

has_binaries() {
  local dir=$1 b
  shift
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

found_or_cached() {
  local name=$1 dir=$2 version_ok=$3 found
  if found="$(command -v "$name" 2>/dev/null)" && "$version_ok" "$found"; then
    printf '%s\n' "$found"
    exit 0
  fi
  if [[ -x "$dir/$name" ]]; then
    printf '%s\n' "$dir/$name"
    exit 0
  fi
}

# Takes the build lock of the cache directory DIR on descriptor 9 (one builder at a time: a
# second caller waits and then finds the cache filled).
take_build_lock() {
  local parent
  parent="$(dirname "$1")"
  mkdir -p "$parent"
  exec 9>"$parent/.lock"
  flock 9
}

# Sets `staging` to a fresh directory beside the cache directory DIR, removed on exit.
make_staging() {
  staging="$(mktemp -d "$(dirname "$1")/.build.XXXXXX")"
  # shellcheck disable=SC2064  # the directory is known now
  trap "rm -rf '$staging'" EXIT
}

cached_or_staging() {
  local env=$1 dir=$2
  shift 2
  local given=${!env:-}
  if [[ -n $given ]]; then
    has_binaries "$given" "$@" || die "$env=$given lacks one of: $*"
    printf '%s\n' "$given"
    exit 0
  fi
  if has_binaries "$dir" "$@"; then
    printf '%s\n' "$dir"
    exit 0
  fi
  take_build_lock "$dir"
  if has_binaries "$dir" "$@"; then
    printf '%s\n' "$dir"
    exit 0
  fi
  make_staging "$dir"
  mkdir -p "$staging/bin"
}

publish_staged() {
  local dir=$1
  shift
  has_binaries "$staging/bin" "$@" || die "build finished without all of: $*"
  rm -rf "$dir"
  mv "$staging/bin" "$dir"
  log "cached in $dir"
  printf '%s\n' "$dir"
}

build_once() {
  local dir=$1 ready=$2 build=$3
  shift 3
  "$ready" "$dir" && return
  (
    take_build_lock "$dir"
    "$ready" "$dir" && exit 0
    command -v go >/dev/null || die "go is not installed"
    make_staging "$dir"
    chmod 0755 "$staging"
    local start=$SECONDS
    CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local "$build" "$staging" "$@"
    rm -rf "$dir"
    mv "$staging" "$dir"
    trap - EXIT
    log "built $(basename "$dir") in $((SECONDS - start)) s; cached in $dir"
  )
}
