#!/usr/bin/env bash
# Delete the kind cluster made by hack/kind-up.sh.
#
#   hack/kind-down.sh [--name NAME] [--logs DIR]
#
#   --name  cluster name (default $KIND_CLUSTER_NAME, i.e. netpol)
#   --logs  export the nodes' logs (`kind export logs`) into DIR before deleting
# Deleting a cluster that does not exist is not an error (CI calls this in `if: always()`).
set -euo pipefail

# shellcheck source=kind/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/kind/common.sh"

logs_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name)
      [[ $# -ge 2 ]] || die "--name needs a value"
      KIND_CLUSTER_NAME=$2
      shift
      ;;
    --name=*) KIND_CLUSTER_NAME=${1#--name=} ;;
    --logs)
      [[ $# -ge 2 ]] || die "--logs needs a directory"
      logs_dir=$2
      shift
      ;;
    --logs=*) logs_dir=${1#--logs=} ;;
    *) die "unknown argument '$1' (expected --name NAME or --logs DIR)" ;;
  esac
  shift
done

need "$KIND" "to delete the cluster"
if ! cluster_exists; then
  log "no kind cluster named '$KIND_CLUSTER_NAME'; nothing to delete"
  exit 0
fi
if [[ -n "$logs_dir" ]]; then
  mkdir -p "$logs_dir"
  log "exporting logs of '$KIND_CLUSTER_NAME' into $logs_dir"
  "$KIND" export logs "$logs_dir" --name "$KIND_CLUSTER_NAME" ||
    log "warning: kind export logs failed; deleting the cluster anyway"
fi
log "deleting kind cluster '$KIND_CLUSTER_NAME'"
"$KIND" delete cluster --name "$KIND_CLUSTER_NAME" || die "kind delete cluster --name $KIND_CLUSTER_NAME failed"
