#!/usr/bin/env bash
# `make test-compat`: the project's kernel tests inside a Debian 12 VM with the stock
# 6.1 kernel (kprobes and matching headers; no sock:sk_data_ready, no rx_sk on
# skb:kfree_skb), where the probes fall back to kprobes (docs/COMPATIBILITY.md).
#
#   bash tests/compat/run-vm.sh                 # default test selection, ~15-25 min under TCG
#   bash tests/compat/run-vm.sh tests/compat    # any pytest arguments
#
# Needs root on a Debian 12 host (debootstrap, qemu-system-x86 are installed by
# vm/build.sh; the image is built once, ~100-150 s, into $TQ_VM_DIR, default
# /var/tmp/tq-vm) and the checkout's .venv (`make deps`). No KVM needed: QEMU TCG,
# so a bcc compile takes 30-70 s in the guest. That is why this is not part of
# .ci/run: minutes of emulation per test run, for a kernel CI does not run.
# The VM scripts in tests/compat/vm/ are copies of the shared harness (shared/vm),
# kept here so the command works on any machine with the checkout alone.
# Env: TQ_COMPAT_TREE (tree to test, default this checkout), TQ_VM_TIMEOUT (s, default 2400).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "${TQ_COMPAT_TREE:-$HERE/../..}" && pwd)
if [ "$(id -u)" -ne 0 ]; then echo "run-vm.sh: needs root (builds and boots the VM image)" >&2; exit 2; fi
if [ ! -x "$TREE/.venv/bin/python" ]; then echo "run-vm.sh: $TREE/.venv missing: run make deps first" >&2; exit 2; fi
if [ "$("$TREE/.venv/bin/python" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" != True ]; then
  echo "run-vm.sh: .venv must be Debian 12's python 3.11 to run in the guest" >&2; exit 2
fi
bash "$HERE/vm/build.sh"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(tests/compat tests/test_bpf_probes.py tests/kernel/test_bpf_cli.py tests/kernel/test_foundation.py)
rc=0
bash "$HERE/vm/run.sh" --share "$TREE" --timeout "${TQ_VM_TIMEOUT:-2400}" \
  "bash tests/compat/guest.sh $(printf '%q ' "${args[@]}")" || rc=$?
rm -f "$TREE/.tq-compat-results.jsonl"
exit $rc
