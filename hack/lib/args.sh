# shellcheck shell=bash
# Sourced by the hack/ scripts that take --flags and run against a cluster
# (upstream-conformance.sh, upstream-e2e.sh, sonobuoy-local.sh): the rules every one of them
# parses by, and the paths they take.
#
#   parse_flags FLAG ARGS...   # the parse loop: each --flag=value is split into --flag value,
#                              # -h/--help is `usage 0`, --build-only sets build_only=1, and
#                              # every other word is handed, with the words after it, to the
#                              # caller's function FLAG, which sets `took` to how many words it
#                              # used (left at 0: "unknown argument", `usage 2`)
#   need "$@"                  # in FLAG's case arm: dies "--flag needs a value" unless one follows
#   kubeconfig_arg PATH        # dies unless PATH (--kubeconfig) was given and is readable;
#                              # prints it absolute
#   out_dir DIR NAME           # DIR (--out), else ${TMPDIR:-/tmp}/NAME.<time>, created; prints it
#                              # absolute
#
# The caller defines log(), die() and usage().

flag_words() {
  words=()
  local arg
  for arg in "$@"; do
    if [[ $arg == --*=* ]]; then
      words+=("${arg%%=*}" "${arg#*=}")
    else
      words+=("$arg")
    fi
  done
}

# shellcheck disable=SC2034  # build_only is the caller's
parse_flags() {
  local flag=$1
  shift
  flag_words "$@"
  set -- "${words[@]+"${words[@]}"}"
  while [[ $# -gt 0 ]]; do
    case $1 in
      -h | --help) usage 0 ;;
      --build-only) build_only=1; shift ;;
      *)
        took=0
        "$flag" "$@"
        [[ $took -gt 0 ]] || { log "unknown argument: $1"; usage 2; }
        shift "$took"
        ;;
    esac
  done
}

need() { [[ $# -ge 2 ]] || die "$1 needs a value"; }

kubeconfig_arg() {
  [[ -n $1 ]] || die "--kubeconfig is required (or --build-only)"
  [[ -r $1 ]] || die "cannot read kubeconfig $1"
  readlink -f "$1"
}

out_dir() {
  local dir=${1:-${TMPDIR:-/tmp}/$2.$(date +%Y%m%d-%H%M%S)}
  mkdir -p "$dir"
  readlink -f "$dir"
}
