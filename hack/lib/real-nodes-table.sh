# shellcheck shell=bash
# real_nodes_table BIN JUNIT [RUN ARGS...]: the whole table on real nodes of this machine, the
# way the README's run command does it: `BIN run --local` with no runtime asked for (the default:
# kubelet + containerd + runc + kube-proxy per node, the enforcer as the enforcer/deploy/
# DaemonSet; --no-enforcer among the RUN ARGS leaves it out) in its own state directory, which brings the
# nodes up for the run and takes them down after it. The kube backend runs exactly as against any
# other cluster: agnhost pods, Services, the exec prober. The JUnit goes into JUNIT; a `local
# down` covers a run that died before tearing down. Then checks that the JUnit says the run went
# the way it claims: prober=exec, runtime=kubelet and, with the enforcer, enforcer=daemonset.
# Returns the run's exit status, or 1 when the JUnit disagrees.
#
# Needs the node binaries (NETPOL_SETUP_NODES=1 hack/setup.sh) and images (hack/node-images.sh).
real_nodes_table() {
  local bin=$1 junit=$2
  shift 2
  local dir status=0 enforced=1 arg
  for arg in "$@"; do [[ $arg != --no-enforcer ]] || enforced=0; done
  dir="$(mktemp -d "${TMPDIR:-/tmp}/netpol-real-nodes.XXXXXX")"
  (
    nodes() {
      env -u NETPOL_LOCAL_RUNTIME -u NETPOL_KUBECONFIG -u NETPOL_NO_ENFORCER NETPOL_LOCAL_DIR="$dir/cluster" \
        NETPOL_LOCAL_INSTANCE=rt "$bin" "$@"
    }
    # shellcheck disable=SC2317  # run by the trap
    down() { nodes local down >/dev/null 2>&1 || true; }
    trap down EXIT
    trap 'exit 130' INT TERM
    nodes run --local --junit "$junit" "$@"
  ) || status=$?
  rm -rf "$dir"
  [[ -s $junit ]] || { echo "real nodes: the run wrote no JUnit ($junit)" >&2; return 1; }
  local want=(prober=exec runtime=kubelet)
  [[ $enforced -eq 0 ]] || want+=(enforcer=daemonset)
  local pair name value
  for pair in "${want[@]}"; do
    name=${pair%%=*} value=${pair#*=}
    if ! grep -q "<property name=\"$name\" value=\"$value\"/>" "$junit"; then
      echo "real nodes: the JUnit does not say $name=$value ($junit)" >&2
      return 1
    fi
  done
  echo "real nodes: $(grep -c '<testcase ' "$junit") trials; the JUnit says ${want[*]}," \
    "execs=$(sed -n 's/.*<property name="execs" value="\([0-9]*\)".*/\1/p' "$junit" | head -n1)" >&2
  return "$status"
}
