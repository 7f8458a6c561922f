#!/usr/bin/env bash
# Checks of junit-verdict.py on JUnit files made from the real case table (no cluster needed).
#
#   hack/kind/junit-verdict-test.sh
#
# The table's plan comes from the suite itself (`netpol-conformance plan --json`): $NETPOL_BIN,
# else the debug build, else `cargo run`.
# Each check states the verdict it expects; the script exits non-zero if any differs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/../.."
verdict="$here/junit-verdict.py"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

plan="$tmp/plan.json"
if [[ -x ${NETPOL_BIN:-} ]]; then
  "$NETPOL_BIN" plan --json >"$plan"
else
  (cd "$root" && cargo run -q --locked -p netpol-conformance --bin netpol-conformance -- plan --json) >"$plan"
fi

# make_junit OUT MODE: one <testcase> per trial of the plan, named as the suite names them
# ("<trial>: <case name>"); MODE says how each trial ends:
#   no-enforcement  denial cases fail, allow-only cases pass (what a policy-free CNI gives)
#   all-pass        every case passes
#   flip-allow      like no-enforcement, but one allow-only case fails
#   error           like no-enforcement, but one denial case is an <error>
#   skip-some       like no-enforcement, but the first case is skipped
make_junit() {
  python3 - "$plan" "$1" "$2" "$verdict" <<'PY'
import importlib.util, pathlib, sys
plan, out, mode, verdict = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("jv", verdict)
jv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jv)
trials = jv.load_plan(pathlib.Path(plan))
allow_only = sorted(t for t, d in trials.items() if not d)
denying = sorted(t for t, d in trials.items() if d)
assert allow_only and denying, "the table needs both kinds of trial for these checks"
lines = ['<testsuites name="netpol-conformance">', '<testsuite name="t">']
for i, trial in enumerate(sorted(trials)):
    fail = trials[trial] and mode != "all-pass"
    body = '<failure message="mismatch">tables</failure>' if fail else ""
    if mode == "flip-allow" and trial == allow_only[0]:
        body = '<failure message="mismatch"/>'
    if mode == "error" and trial == denying[0]:
        body = '<error message="exec failed"/>'
    if mode == "skip-some" and i == 0:
        body = '<skipped message="feature not supported"/>'
    lines.append(f'<testcase classname="netpol-conformance.test" name="{trial}: case &apos;{trial}&apos;">{body}</testcase>')
lines += ["</testsuite>", "</testsuites>"]
pathlib.Path(out).write_text("\n".join(lines))
PY
}

failed=0
# check WANT-EXIT DESCRIPTION ARGS...: run junit-verdict.py and compare its exit status.
check() {
  local want=$1 what=$2 got=0
  shift 2
  python3 "$verdict" "$@" >"$tmp/out" 2>&1 || got=$?
  if [[ "$got" -eq "$want" ]]; then
    printf 'ok    %s\n' "$what"
  else
    printf 'FAIL  %s: exit %s, want %s\n' "$what" "$got" "$want"
    sed 's/^/      /' "$tmp/out"
    failed=1
  fi
}

for mode in no-enforcement all-pass flip-allow error skip-some; do
  make_junit "$tmp/$mode.xml" "$mode"
done
printf '<testsuites/>' >"$tmp/empty.xml"
printf '<html/>' >"$tmp/not-junit.xml"

check 0 "no-enforcement accepts: denial cases failed, allow-only passed" no-enforcement "$tmp/no-enforcement.xml" --plan "$plan"
check 1 "no-enforcement rejects a run where denial cases passed" no-enforcement "$tmp/all-pass.xml" --plan "$plan"
check 1 "no-enforcement rejects a failed allow-only case" no-enforcement "$tmp/flip-allow.xml" --plan "$plan"
check 1 "no-enforcement rejects an <error>" no-enforcement "$tmp/error.xml" --plan "$plan"
check 0 "no-enforcement accepts skipped cases" no-enforcement "$tmp/skip-some.xml" --plan "$plan"
check 1 "no-enforcement rejects a run with no case" no-enforcement "$tmp/empty.xml" --plan "$plan"
check 2 "no-enforcement reports a file that is not JUnit" no-enforcement "$tmp/not-junit.xml" --plan "$plan"
check 2 "no-enforcement reports a missing plan" no-enforcement "$tmp/all-pass.xml" --plan "$tmp/nope"
printf '{"error": "case x: unknown world"}' >"$tmp/plan-error.json"
check 2 "no-enforcement reports a plan the suite could not make" no-enforcement "$tmp/all-pass.xml" --plan "$tmp/plan-error.json"
printf '{"cases": [{"id": "x"}]}' >"$tmp/plan-bad.json"
check 2 "no-enforcement reports JSON that is no plan" no-enforcement "$tmp/all-pass.xml" --plan "$tmp/plan-bad.json"
# A real JUnit from `netpol-conformance run --no-enforcer` on the local cluster (three upstream
# cases: two allow-only, one default deny), as the suite writes it.
real="$here/testdata/local-no-enforcer.junit.xml"
check 0 "no-enforcement accepts the suite's own JUnit of a run without enforcer" no-enforcement "$real" --plan "$plan"
check 1 "summary rejects the suite's own JUnit of a run without enforcer" summary "$real"
check 0 "summary accepts a run where everything passed" summary "$tmp/all-pass.xml"
check 1 "summary rejects failures" summary "$tmp/no-enforcement.xml"
check 1 "summary rejects an empty run" summary "$tmp/empty.xml"
check 2 "summary reports a missing file" summary "$tmp/missing.xml"

if [[ $failed -ne 0 ]]; then
  echo "junit-verdict-test: some checks failed" >&2
  exit 1
fi
echo "junit-verdict-test: all checks passed"
