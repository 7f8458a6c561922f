# shellcheck shell=bash
# Sourced by hack/upstream-conformance.sh: building and reading sigs.k8s.io/network-policy-api's
# conformance suite from its Go module, without a source checkout.
#
#   npa_build_suite DIR VERSION   # DIR/conformance.test (go test -c of .../conformance at
#                                 # VERSION), DIR/crds/*.yaml (that version's experimental-channel
#                                 # CRDs), DIR/shortnames (every ConformanceTest ShortName) and
#                                 # DIR/images (every image its manifests name)
#   npa_parse_results LOG         # prints "passed failed skipped" of the suite's tests (the
#                                 # ShortName level of `go test -v`: TestConformance/<ShortName>,
#                                 # TestConformanceProfiles/<ShortName>, or .../standard_conformance_tests/<ShortName>)
#   npa_failed_tests LOG          # prints the ShortNames that failed, one a line
#
# The caller exports GOFLAGS=-mod=mod and GOTOOLCHAIN=local and defines die() and log().

npa_build_suite() {
  local dir=$1 version=$2
  local work="$dir/module"
  mkdir -p "$work" "$dir/crds"
  printf 'module netpol.local/npa-conformance-build\n\ngo 1.24\n\nrequire sigs.k8s.io/network-policy-api %s\n' \
    "$version" >"$work/go.mod"
  # -t: also the modules the package's tests import (client-go auth plugins, controller-runtime).
  if ! (cd "$work" && go get -t "sigs.k8s.io/network-policy-api/conformance@$version" >"$dir/go-get.log" 2>&1); then
    cat "$dir/go-get.log" >&2
    die "could not resolve sigs.k8s.io/network-policy-api/conformance@$version from the Go module proxy"
  fi
  rm -f "$dir/go-get.log"
  (cd "$work" && go test -c -trimpath -ldflags "-s -w" -o "$dir/conformance.test" \
    sigs.k8s.io/network-policy-api/conformance)
  local src
  src="$(cd "$work" && go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api)"
  [[ -d "$src/config/crd/experimental" ]] || die "no config/crd/experimental in $src"
  cp "$src"/config/crd/experimental/policy.networking.k8s.io_*.yaml "$dir/crds/"
  chmod u+w "$dir"/crds/*.yaml
  grep -rhoE 'ShortName:[[:space:]]*"[^"]+"' "$src/conformance/tests" |
    sed 's/.*"\(.*\)"/\1/' | sort -u >"$dir/shortnames"
  grep -rhoE 'image:[[:space:]]*[^[:space:]]+' "$src/conformance/base" |
    sed 's/image:[[:space:]]*//' | sort -u >"$dir/images"
  [[ -s "$dir/shortnames" ]] || die "no ShortName found in $src/conformance/tests"
  rm -rf "$work"
}

# The `--- PASS|FAIL|SKIP: <test>` lines one level below the Go test function.
npa_result_lines() {
  sed -nE 's/^[[:space:]]*--- (PASS|FAIL|SKIP): TestConformance(Profiles)?(\/standard_conformance_tests)?\/([^/[:space:]]+) \(.*/\1 \4/p' "$1"
}

npa_parse_results() {
  npa_result_lines "$1" | awk '
    $1 == "PASS" { p++ } $1 == "FAIL" { f++ } $1 == "SKIP" { s++ }
    END { printf "%d %d %d\n", p, f, s }'
}

npa_failed_tests() {
  npa_result_lines "$1" | awk '$1 == "FAIL" { print $2 }'
}
