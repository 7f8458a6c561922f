# shellcheck shell=bash
# Sourced by the scripts that build binaries once into the cache outside the repository
# (hack/control-plane.sh, hack/node-binaries.sh): one way to find, lock, stage and publish them.
#
#   netpol_cache_root                 # prints the cache root: $NETPOL_CACHE_DIR, else
#                                     # ${XDG_CACHE_HOME:-~/.cache}/netpol-conformance
#   has_binaries DIR NAME...          # whether DIR holds every NAME, executable
#   cached_or_staging ENV DIR NAME... # when the variable named ENV is set, prints it (dying when
#                                     # it lacks a NAME) and exits 0; when DIR has every NAME,
#                                     # prints DIR and exits 0. Otherwise takes DIR's build lock
#                                     # (a second caller waits, then finds DIR filled and exits
#                                     # the same way) and sets `staging` to a fresh directory
#                                     # beside DIR with an empty staging/bin, removed on exit
#   publish_staged DIR NAME...        # checks staging/bin has every NAME, puts it in DIR's
#                                     # place and prints DIR
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
  local parent
  parent="$(dirname "$dir")"
  mkdir -p "$parent"
  # One builder at a time: a second caller waits and then finds the cache filled.
  exec 9>"$parent/.lock"
  flock 9
  if has_binaries "$dir" "$@"; then
    printf '%s\n' "$dir"
    exit 0
  fi
  staging="$(mktemp -d "$parent/.build.XXXXXX")"
  # shellcheck disable=SC2064  # the directory is known now
  trap "rm -rf '$staging'" EXIT
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
