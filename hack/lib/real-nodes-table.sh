# shellcheck shell=bash
# real_nodes_table BIN JUNIT [RUN ARGS...]: the whole table on real nodes of this machine.
#
# Brings up a local cluster with `local up --runtime kubelet` (kubelet + containerd + runc +
# kube-proxy per node, the enforcer as the enforcer/deploy/ DaemonSet; pass --no-enforcer in
# NETPOL_UP_ARGS to leave it out) in its own state directory, runs `BIN run --kubeconfig` on it —
# the code path of any other cluster: agnhost pods, Services, the exec prober — with the JUnit
# into JUNIT, takes the cluster down (also on failure and Ctrl-C), and then checks that the
# JUnit says the run went the way it claims: prober=exec, runtime=kubelet and, with the
# enforcer, enforcer=daemonset. Returns the run's exit status, or 1 when the JUnit disagrees.
#
# Needs the node binaries (NETPOL_SETUP_NODES=1 hack/setup.sh) and images (hack/node-images.sh).
real_nodes_table() {
  local bin=$1 junit=$2
  shift 2
  local dir status=0 up_args=()
  dir="$(mktemp -d "${TMPDIR:-/tmp}/netpol-real-nodes.XXXXXX")"
  read -r -a up_args <<<"${NETPOL_UP_ARGS:-}"
  (
    nodes() { env NETPOL_LOCAL_DIR="$dir/cluster" NETPOL_LOCAL_INSTANCE=rt "$bin" "$@"; }
    # shellcheck disable=SC2317  # run by the trap
    down() { nodes local down >/dev/null 2>&1 || true; }
    trap down EXIT
    trap 'exit 130' INT TERM
    nodes local up --runtime kubelet "${up_args[@]}" >&2 || exit $?
    nodes run --kubeconfig "$dir/cluster/kubeconfig" --junit "$junit" "$@"
  ) || status=$?
  rm -rf "$dir"
  [[ -s $junit ]] || { echo "real nodes: the run wrote no JUnit ($junit)" >&2; return 1; }
  local want=(prober=exec runtime=kubelet)
  [[ " ${up_args[*]} " == *" --no-enforcer "* ]] || want+=(enforcer=daemonset)
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
