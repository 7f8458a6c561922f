#!/usr/bin/env bash
# Checks of junit-verdict.py on JUnit files made from the real case table (no cluster needed).
#
#   hack/kind/junit-verdict-test.sh
#
# Each check states the verdict it expects; the script exits non-zero if any differs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cases="$here/../../cases"
verdict="$here/junit-verdict.py"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# make_junit OUT MODE: one <testcase> per case id of the table, named as the suite names them
# ("<trial>: <case name>"); MODE says how each case ends:
#   no-enforcement  denial cases fail, allow-only cases pass (what a policy-free CNI gives)
#   all-pass        every case passes
#   flip-allow      like no-enforcement, but one allow-only case fails
#   error           like no-enforcement, but one denial case is an <error>
#   skip-some       like no-enforcement, but the first case is skipped
make_junit() {
  python3 - "$cases" "$1" "$2" "$verdict" <<'PY'
import importlib.util, pathlib, sys
cases_dir, out, mode, verdict = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("jv", verdict)
jv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jv)
cases = jv.load_cases([pathlib.Path(cases_dir)])
allow_only = sorted(c for c, v in cases.items() if not v["denies"])
denying = sorted(c for c, v in cases.items() if v["denies"])
assert allow_only and denying, "the table needs both kinds of case for these checks"
lines = ['<testsuites name="netpol-conformance">', '<testsuite name="t">']
for i, cid in enumerate(sorted(cases)):
    fail = cases[cid]["denies"] and mode != "all-pass"
    body = '<failure message="mismatch">tables</failure>' if fail else ""
    if mode == "flip-allow" and cid == allow_only[0]:
        body = '<failure message="mismatch"/>'
    if mode == "error" and cid == denying[0]:
        body = '<error message="exec failed"/>'
    if mode == "skip-some" and i == 0:
        body = '<skipped message="feature not supported"/>'
    # The suite names a JUnit case "<trial>: <case name>"; npa trials carry a ::v1alphaN variant.
    trial = f"npa::area::{cid}::v1alpha2" if i % 2 else f"upstream::area::{cid}"
    lines.append(f'<testcase classname="netpol-conformance.test" name="{trial}: case &apos;{cid}&apos;">{body}</testcase>')
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

check 0 "no-enforcement accepts: denial cases failed, allow-only passed" no-enforcement "$tmp/no-enforcement.xml" --cases "$cases"
check 1 "no-enforcement rejects a run where denial cases passed" no-enforcement "$tmp/all-pass.xml" --cases "$cases"
check 1 "no-enforcement rejects a failed allow-only case" no-enforcement "$tmp/flip-allow.xml" --cases "$cases"
check 1 "no-enforcement rejects an <error>" no-enforcement "$tmp/error.xml" --cases "$cases"
check 0 "no-enforcement accepts skipped cases" no-enforcement "$tmp/skip-some.xml" --cases "$cases"
check 1 "no-enforcement rejects a run with no case" no-enforcement "$tmp/empty.xml" --cases "$cases"
check 2 "no-enforcement reports a file that is not JUnit" no-enforcement "$tmp/not-junit.xml" --cases "$cases"
check 2 "no-enforcement reports a missing cases directory" no-enforcement "$tmp/all-pass.xml" --cases "$tmp/nope"
# A real JUnit from `netpol-conformance run --no-enforcer` on the local cluster (three upstream
# cases: two allow-only, one default deny), as the suite writes it.
real="$here/testdata/local-no-enforcer.junit.xml"
check 0 "no-enforcement accepts the suite's own JUnit of a run without enforcer" no-enforcement "$real" --cases "$cases"
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
