#!/usr/bin/env bash
# Lint the repository's scripts and workflows; exits non-zero on any finding.
#
#   hack/lint.sh
#
# - shellcheck on every shell script under hack/ and plugin/ (by extension .sh or a sh/bash
#   shebang) and on .ci/run when it exists;
# - actionlint on .github/workflows/*.yml (installed on first use by hack/install-actionlint.sh
#   into a cache outside the repository; actionlint also runs shellcheck on `run:` blocks);
# - hadolint on every Containerfile (installed on first use by hack/install-hadolint.sh), with
#   DL3008 (pin apt package versions) off: Debian drops old versions from its archive, so pinned
#   versions break the build, and the base image tag already fixes the release;
# - the hermetic self-checks of the kind, bench and cache tooling (hack/kind/*-test.sh,
#   hack/bench/junit-breakdown-test.sh, hack/lib/cache-test.sh: no Docker, no cluster, a few
#   seconds), so the scripts that only run on GitHub runners are exercised here too;
# - sizes: no file in suite/src or enforcer/src over 600 lines, no function over 120;
# - modules: no import cycle between the top-level modules of a crate (hack/lib/module-cycles.py).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf 'lint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v shellcheck >/dev/null 2>&1 ||
  die "shellcheck is not installed (Debian/Ubuntu: apt-get install shellcheck)"

is_shell_script() {
  local f=$1 first
  [[ "$f" == *.sh ]] && return 0
  IFS= read -r first <"$f" || true
  [[ "$first" =~ ^#!(/usr/bin/env[[:space:]]+|/bin/|/usr/bin/)(ba)?sh([[:space:]]|$) ]]
}

scripts=()
while IFS= read -r -d '' f; do
  if is_shell_script "$f"; then
    scripts+=("$f")
  fi
done < <(find hack plugin -type f -not -path '*/testdata/*' -print0 2>/dev/null | sort -z)
if [[ -f .ci/run ]]; then
  scripts+=(.ci/run)
fi
[[ ${#scripts[@]} -gt 0 ]] || die "found no shell scripts under hack/ or plugin/; is $root the repository?"

failed=0
log "shellcheck on ${#scripts[@]} scripts: ${scripts[*]}"
if ! shellcheck --external-sources --source-path=SCRIPTDIR "${scripts[@]}"; then
  log "shellcheck reported findings (above)"
  failed=1
fi

workflows=()
while IFS= read -r -d '' f; do
  workflows+=("$f")
done < <(find .github/workflows -maxdepth 1 -type f \( -name '*.yml' -o -name '*.yaml' \) -print0 2>/dev/null | sort -z)
if [[ ${#workflows[@]} -eq 0 ]]; then
  log "no workflows under .github/workflows; skipping actionlint"
else
  actionlint="$("$root/hack/install-actionlint.sh")" || die "could not provide actionlint"
  log "actionlint on ${#workflows[@]} workflows: ${workflows[*]}"
  if ! "$actionlint" -shellcheck "$(command -v shellcheck)" "${workflows[@]}"; then
    log "actionlint reported findings (above)"
    failed=1
  fi
fi

containerfiles=()
while IFS= read -r -d '' f; do
  containerfiles+=("$f")
done < <(find . -path ./target -prune -o -path ./.git -prune -o -type f \( -name Containerfile -o -name Dockerfile \) -print0 | sort -z)
if [[ ${#containerfiles[@]} -gt 0 ]]; then
  hadolint="$("$root/hack/install-hadolint.sh")" || die "could not provide hadolint"
  for f in "${containerfiles[@]}"; do
    ignores=(--ignore DL3008)
    if [[ "$f" == ./enforcer/Containerfile ]]; then
      # The enforcer is a node dataplane agent: it programs nftables/iptables and binds NFQUEUE
      # in the host network namespace, so its image runs as root on purpose.
      ignores+=(--ignore DL3002)
    fi
    log "hadolint ${f#./}"
    if ! "$hadolint" --no-color "${ignores[@]}" "$f"; then
      log "hadolint reported findings in ${f#./} (above)"
      failed=1
    fi
  done
fi

selfcheck_out="$(mktemp)"
trap 'rm -f "$selfcheck_out"' EXIT
for t in hack/kind/junit-verdict-test.sh hack/kind/kind-scripts-test.sh hack/bench/junit-breakdown-test.sh hack/lib/cache-test.sh; do
  if [[ -f "$t" ]]; then
    log "$t"
    if ! bash "$t" >"$selfcheck_out" 2>&1; then
      cat "$selfcheck_out" >&2
      log "$t failed (above)"
      failed=1
    fi
  fi
done

# Sizes of the suite's and the enforcer's sources, largest first: files over 600 lines and
# functions over 120 (rustfmt layout: a fn ends at the first `}` line at its own indent). Any
# is a finding: a file that size holds more than one job, a function that size more than one
# step.
size_report() {
  local files
  files="$(find suite/src enforcer/src -name '*.rs' | sort)"
  [[ -n $files ]] || return 0
  # shellcheck disable=SC2086  # one path a word
  wc -l $files | awk '$2 != "total" && $1 > 600 { printf "  file %5d lines  %s\n", $1, $2 }' | sort -k2,2nr
  # shellcheck disable=SC2086
  awk '
    FNR == 1 { open = 0 }
    !open && /^ *(pub(\([a-z]+\))? )?(async )?(unsafe )?(const )?fn [A-Za-z_0-9]+/ && !/;[[:space:]]*$/ {
      indent = $0; sub(/[^ ].*/, "", indent)
      name = $0; sub(/.*fn /, "", name); sub(/[^A-Za-z_0-9].*/, "", name)
      start = FNR; open = 1
      if ($0 ~ /}[[:space:]]*$/ && $0 ~ /{/) open = 0
      next
    }
    open && $0 == indent "}" {
      open = 0
      if (FNR - start + 1 > 120) printf "  fn   %5d lines  %s:%d %s\n", FNR - start + 1, FILENAME, start, name
    }' $files | sort -k2,2nr
}
sizes="$(size_report)"
if [[ -n $sizes ]]; then
  log "sources over 600 lines or functions over 120 lines in suite/src, enforcer/src:"
  printf '%s\n' "$sizes" >&2
  failed=1
else
  log "sizes: no file in suite/src, enforcer/src over 600 lines, no function over 120"
fi

# Modules import one way: no cycle between the top-level modules of any crate.
if cycles="$(python3 hack/lib/module-cycles.py suite/src enforcer/src local/src api/src)"; then
  log "modules: no import cycle in suite, enforcer, local, api"
else
  log "import cycles between modules (each names its crate's src directory):"
  printf '%s
' "$cycles" >&2
  failed=1
fi

if [[ $failed -ne 0 ]]; then
  die "lint failed"
fi
log "ok"
