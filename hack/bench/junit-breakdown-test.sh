#!/usr/bin/env bash
# Checks of junit-breakdown.py on a small JUnit fixture (testdata/junit.xml: two timed trials,
# one skipped, concurrency 2), so hack/bench-table.sh's numbers are right without a cluster.
#
#   hack/bench/junit-breakdown-test.sh
#
# The fixture's floor: 1 s of target set-up + max(turns chain, all ÷ concurrency), where a
# trial's least time is its deny groups × its connect timeout + its world set-up: trial a
# (own) 2 × 1 s + 2 s = 4 s, trial b (turns) 1 × 1 s + 0 s = 1 s; chain 1 s, all ÷ 2 = 2.5 s;
# floor 3.5 s.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tool="$here/junit-breakdown.py"
fixture="$here/testdata/junit.xml"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failed=0
fail() { printf 'junit-breakdown-test: FAIL: %s\n' "$*" >&2; failed=1; }

# Two runs of the fixture, 8 s and 12 s of wall: per-run rows, then the median.
out="$(python3 "$tool" "$fixture=8" "$fixture=12")" || fail "two runs: exit $?"
want_rows=(
  "     1      8.00      3.50      2.29     18.75      2.00      1.50      0.20      0.50      6.00      0.70      1.10      1.90      1.90"
  "     2     12.00      3.50      3.43     12.50      2.00      1.50      0.20      0.50      6.00      0.70      1.10      1.90      1.90"
  "median     10.00      3.50      2.86     15.62      2.00      1.50      0.20      0.50      6.00      0.70      1.10      1.90      1.90"
  "run 1: 2 timed trials, 4 deny steps in 3 deny groups, 150 probes, concurrency 2; floor = set-up 1.00 + max(turns chain 1.00, all / concurrency 2.50)"
)
for row in "${want_rows[@]}"; do
  grep -qxF -- "$row" <<<"$out" || fail "missing row: $row"$'\n'"got:"$'\n'"$out"
done

# No wall given: the suite's own time (9.5 s).
out="$(python3 "$tool" "$fixture")" || fail "suite time: exit $?"
grep -qE '^ +1 +9\.50 +3\.50 +2\.71 ' <<<"$out" || fail "suite time not used as the wall: $out"

# expect_error DESCRIPTION FILE: the tool must refuse FILE with exit 1 and say why.
expect_error() {
  local status=0
  python3 "$tool" "$2" >/dev/null 2>"$tmp/err" || status=$?
  [[ $status -eq 1 ]] || fail "$1: exit $status, want 1"
  grep -q 'junit-breakdown: error:' "$tmp/err" || fail "$1: no error message"
}
printf 'not xml' >"$tmp/garbage.xml"
expect_error "not JUnit" "$tmp/garbage.xml"
sed '/trial-concurrency/d' "$fixture" >"$tmp/no-concurrency.xml"
expect_error "no trial concurrency" "$tmp/no-concurrency.xml"
sed '/deny-steps/d' "$fixture" >"$tmp/untimed.xml"
expect_error "no timed trial" "$tmp/untimed.xml"
sed 's/name="probes" value="50"/name="probes" value="many"/' "$fixture" >"$tmp/nan.xml"
expect_error "a property that is not a number" "$tmp/nan.xml"
expect_error "a wall that is not a number" "$fixture=soon"

if [[ $failed -ne 0 ]]; then
  exit 1
fi
echo "junit-breakdown-test: ok"
