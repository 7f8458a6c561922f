#!/usr/bin/env bash
# Sourced by hack/run-local.sh and hack/test.sh: what this machine's kernel cannot carry, as the
# suite's --exempt-features value, with the reason printed once. SCTP is a standard feature
# (network-policy-api counts it against the standard profile), so a kernel without SCTP sockets
# must be exempted explicitly; the suite never drops it on its own.
#
#   source hack/kernel-features.sh; export NETPOL_EXEMPT_FEATURES="$(kernel_exemptions)"

kernel_exemptions() {
  local why
  if why="$(python3 -c '
import socket, sys
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
except OSError as e:
    print(e.strerror)
    sys.exit(1)
' 2>&1)"; then
    return 0
  fi
  printf 'kernel: exempting SCTP: this kernel has no SCTP sockets (%s)\n' "$why" >&2
  printf 'SCTP\n'
}
