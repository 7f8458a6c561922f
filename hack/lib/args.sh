# shellcheck shell=bash
# Sourced by the hack/ scripts that take --flags (upstream-conformance.sh, upstream-e2e.sh,
# sonobuoy-local.sh): the two rules every one of them parses by.
#
#   flag_words ARGS...   # sets the array `words` to ARGS with each --flag=value split into
#                        # --flag value, so a parser handles one spelling; then:
#                        #   set -- "${words[@]}"
#   need "$@"            # in a parser's case arm: dies "--flag needs a value" unless one follows
#
# The caller defines die().

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

need() { [[ $# -ge 2 ]] || die "$1 needs a value"; }
