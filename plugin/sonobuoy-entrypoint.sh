#!/usr/bin/env bash
# Entry point of the Sonobuoy plugin container (installed as /usr/local/bin/sonobuoy-entrypoint).
#
# Runs `netpol-conformance run --sonobuoy`, which writes junit.xml and report.html into
# $SONOBUOY_RESULTS_DIR and then the `done` file naming that directory (Sonobuoy's worker tars a
# directory it is given, so this wrapper's log travels with the results). This wrapper only adds
# what the binary cannot do for itself:
#   - Sonobuoy's plugin env carries E2E_FOCUS="" and friends; an empty value is dropped so the
#     suite sees "not set" rather than an empty regular expression (an empty E2E_SKIP would
#     match, and skip, every case);
#   - if the binary dies before writing `done` (crash, OOM kill of a child, bad kubeconfig),
#     Sonobuoy would wait for its timeout (`sonobuoy run --timeout`, 6 h by default) and then
#     report the plugin as timed out, with nothing to say why. The wrapper then writes a
#     one-case junit.xml whose <error> carries the exit status and the end of the log, and the
#     `done` file, so `sonobuoy results` shows why.
# Extra arguments are passed to `netpol-conformance run`.
set -euo pipefail

results_dir="${SONOBUOY_RESULTS_DIR:-/tmp/sonobuoy/results}"
export SONOBUOY_RESULTS_DIR="$results_dir"
mkdir -p "$results_dir"

for var in E2E_FOCUS E2E_SKIP NETPOL_PROBE_TARGET NETPOL_TEST_THREADS NETPOL_KUBECONFIG \
  NETPOL_IMPLEMENTATION NETPOL_SCTP NETPOL_AGNHOST_IMAGE; do
  if [[ -z "${!var:-}" ]]; then
    unset "$var"
  fi
done

# The log is kept beside the results (not *.xml, so it is never read as JUnit).
log="$results_dir/netpol-conformance.log"
# stdout stays stdout; stderr goes to the container log and, through tee, to $log.
set +e
{ netpol-conformance run --sonobuoy "$@" 2>&1 1>&3 3>&- | tee -a "$log"; } 3>&1 1>&2
status=${PIPESTATUS[0]}
set -e

if [[ -s "$results_dir/done" ]]; then
  echo "sonobuoy-entrypoint: netpol-conformance exited with status $status; results: $(cat "$results_dir/done")" >&2
  exit "$status"
fi

xml_escape() {
  sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g' \
    -e 's/[^[:print:][:space:]]//g'
}

junit="$results_dir/junit.xml"
if [[ -s "$junit" ]]; then
  echo "sonobuoy-entrypoint: netpol-conformance exited with status $status without writing done; submitting the junit.xml it left" >&2
else
  echo "sonobuoy-entrypoint: netpol-conformance exited with status $status and wrote no results; submitting an error case" >&2
  message="netpol-conformance exited with status $status before writing its results"
  tail_of_log="$(tail -n 100 "$log" 2>/dev/null | xml_escape || true)"
  tmp="$(mktemp "$results_dir/.junit.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  {
    printf '<?xml version="1.0" encoding="UTF-8"?>\n'
    printf '<testsuites name="netpol-conformance" tests="1" failures="0" errors="1">\n'
    printf '  <testsuite name="netpol-conformance" tests="1" failures="0" errors="1" skipped="0">\n'
    printf '    <testcase classname="netpol-conformance.harness" name="netpol-conformance::harness::run">\n'
    printf '      <error message="%s" type="HarnessExited">%s</error>\n' "$message" "$tail_of_log"
    printf '    </testcase>\n'
    printf '  </testsuite>\n'
    printf '</testsuites>\n'
  } >"$tmp"
  chmod 0644 "$tmp"  # the worker sidecar may run as another user
  mv "$tmp" "$junit"
fi
# `done` names what the worker uploads (the directory, tarred by the worker); it is written last.
printf '%s' "$(cd "$results_dir" && pwd -P)" >"$results_dir/done"
if [[ "$status" -eq 0 ]]; then
  status=1
fi
exit "$status"
