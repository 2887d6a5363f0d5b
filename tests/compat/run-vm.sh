#!/usr/bin/env bash
# `make test-compat`: the project's kernel tests inside Debian 12 VMs whose kernels lack
# the newer tracepoints, where the probes fall back to kprobes (docs/COMPATIBILITY.md):
#   6.1   Debian 12's stock kernel (no sock:sk_data_ready, no rx_sk on skb:kfree_skb)
#   5.10  Debian 11's stock kernel on the same userland (no drop reasons either,
#         older tcp reset tracepoint layouts)
#
#   bash tests/compat/run-vm.sh                  # both kernels, one after the other
#   KERNEL=5.10 bash tests/compat/run-vm.sh      # one of them (or make test-compat KERNEL=5.10)
#   bash tests/compat/run-vm.sh tests/compat     # any pytest arguments
#
# Needs root on a Debian 12 host (vm/build.sh installs debootstrap and qemu-system-x86
# and builds each image once, into /var/tmp/tq-vm and /var/tmp/tq-vm-5.10, from the
# host's own apt sources) and the checkout's .venv (`make deps`). No KVM needed: QEMU
# TCG, so a bcc compile takes 30-70 s in the guest: the default selection (tests/compat and
# tests/kernel/test_accept.py, the scenarios docs/COMPATIBILITY.md records per kernel) runs for
# ~8 min per kernel on a quiet host. That is why this is not part of .ci/run.
# Output of each guest is also kept in $TQ_COMPAT_LOGS (default /var/tmp/tq-compat),
# one log per kernel, with the JSON lines of the scenarios at its end.
# Env: KERNEL (6.1, 5.10 or "6.1 5.10"), TQ_COMPAT_TREE (tree to test, default this
# checkout), TQ_COMPAT_COMMIT (commit to name in the log when that tree is an export),
# TQ_VM_TIMEOUT (s per guest, default 2400).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "${TQ_COMPAT_TREE:-$HERE/../..}" && pwd)
KERNELS=${KERNEL:-6.1 5.10}
LOGS=${TQ_COMPAT_LOGS:-/var/tmp/tq-compat}
for k in $KERNELS; do
  case "$k" in 6.1|5.10) ;; *) echo "run-vm.sh: KERNEL must be 6.1 or 5.10, not '$k'" >&2; exit 2 ;; esac
done
if [ "$(id -u)" -ne 0 ]; then echo "run-vm.sh: needs root (builds and boots the VM image)" >&2; exit 2; fi
if [ ! -x "$TREE/.venv/bin/python" ]; then echo "run-vm.sh: $TREE/.venv missing: run make deps first" >&2; exit 2; fi
if [ "$("$TREE/.venv/bin/python" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" != True ]; then
  echo "run-vm.sh: .venv must be Debian 12's python 3.11 to run in the guest" >&2; exit 2
fi
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests/compat tests/kernel/test_accept.py)
mkdir -p "$LOGS"
rc=0
for k in $KERNELS; do
  vmdir=/var/tmp/tq-vm; [ "$k" = 5.10 ] && vmdir=/var/tmp/tq-vm-5.10
  vmdir=${TQ_VM_DIR:-$vmdir}
  KERNEL=$k TQ_VM_DIR=$vmdir bash "$HERE/vm/build.sh"
  log="$LOGS/$k.log"
  t0=$(date +%s)
  set +e   # the guest's exit status, not tee's
  TQ_VM_DIR=$vmdir bash "$HERE/vm/run.sh" --share "$TREE" --timeout "${TQ_VM_TIMEOUT:-2400}" \
    "bash tests/compat/guest.sh $(printf '%q ' "${args[@]}")" 2>&1 | tee "$log"
  krc=${PIPESTATUS[0]}
  set -e
  commit=${TQ_COMPAT_COMMIT:-$(git -C "$TREE" rev-parse --short HEAD 2>/dev/null || echo ?)}
  echo "run-vm.sh: kernel $k: rc=$krc in $(( $(date +%s) - t0 )) s (commit $commit), log $log" | tee -a "$log"
  [ "$krc" = 0 ] || rc=$krc
done
exit $rc
