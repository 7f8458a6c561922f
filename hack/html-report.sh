#!/usr/bin/env bash
# Renders the HTML report of a synthetic 97-trial run and a generated 2,000-trial run, opens both
# in headless Chromium (Debian's `chromium`; installed here when missing), asserts on the DOM, and
# writes the README's screenshot. The checks are suite/tests/html_report.rs; this script makes a
# missing browser a failure and keeps the pages.
#
#   hack/html-report.sh [SCREENSHOT.png]     (default docs/html-report.png)
#
# Pages land in target/html-report/ (NETPOL_HTML_OUT overrides); open report-97.html in a browser.
set -euo pipefail
cd "$(dirname "$0")/.."

screenshot="${1:-docs/html-report.png}"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "html-report: installing Debian's chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
  else
    echo "html-report: needs chromium in PATH (Debian: apt-get install chromium)" >&2
    exit 1
  fi
fi
target="${CARGO_TARGET_DIR:-target}"
out="${NETPOL_HTML_OUT:-$target/html-report}"
mkdir -p "$out" "$(dirname "$screenshot")"
NETPOL_REQUIRE_BROWSER=1 \
  NETPOL_HTML_OUT="$(realpath "$out")" \
  NETPOL_HTML_SCREENSHOT="$(realpath -m "$screenshot")" \
  cargo test -p netpol-conformance --test html_report
echo "html-report: pages in $out, screenshot in $screenshot" >&2
