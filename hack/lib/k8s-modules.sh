# shellcheck shell=bash
# Sourced by the scripts that build commands from Go modules without a source checkout
# (hack/control-plane.sh, hack/node-binaries.sh, hack/upstream-e2e.sh, hack/sonobuoy-local.sh),
# Kubernetes' own from the k8s.io/kubernetes module.
#
#   go_tools_module DIR NAME REQUIRES PKG...
#                                       # DIR gets a throwaway go.mod, module netpol.local/NAME-build
#                                       # with the go.mod lines REQUIRES, and a tools.go importing
#                                       # PKG..., tidied so the modules they need are kept
#   k8s_module_dir DIR VERSION PKG...   # the same, requiring k8s.io/kubernetes VERSION with every
#                                       # staging module replaced by v0.X.Y
#   k8s_ldflags VERSION                 # prints the -ldflags that stamp the version
#
# The caller exports CGO_ENABLED, GOFLAGS=-mod=mod and GOTOOLCHAIN=local and defines die().

go_tools_module() {
  local dir=$1 name=$2 requires=$3 m
  shift 3
  mkdir -p "$dir"
  printf 'module netpol.local/%s-build\n\ngo 1.24\n\n%s\n' "$name" "$requires" >"$dir/go.mod"
  {
    printf 'package tools\n\nimport (\n'
    for m in "$@"; do printf '\t_ "%s"\n' "$m"; done
    printf ')\n'
  } >"$dir/tools.go"
  (cd "$dir" && go mod tidy >/dev/null)
}

k8s_module_dir() {
  local dir=$1 version=$2
  shift 2
  local minor="v0.${version#v1.}"
  mkdir -p "$dir"
  # The staging modules are the `replace k8s.io/x => ./staging/src/k8s.io/x` lines of
  # k8s.io/kubernetes' own go.mod; each becomes a require of the published v0.X.Y.
  local gomod
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$version"
  local mods m requires
  mods="$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod")"
  [[ -n "$mods" ]] || die "no staging modules found in $gomod"
  requires="$(
    printf 'require k8s.io/kubernetes %s\n\n' "$version"
    for m in $mods; do printf 'replace %s => %s %s\n' "$m" "$m" "$minor"; done
  )"
  go_tools_module "$dir" k8s "$requires" "$@"
}

k8s_ldflags() {
  local version=$1 pkg
  local major="${version#v}"; major="${major%%.*}"
  local kminor="${version#v*.}"; kminor="${kminor%%.*}"
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$kminor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s\n' "$ldflags"
}
