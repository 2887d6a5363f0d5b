#!/usr/bin/env bash
# The storm ratio (bench/storm_overhead.py) inside a test VM, shortened to fit emulation:
# traced vs untraced connect/accept/close cycles per second, measured in the same guest run.
#   KERNEL=5.10 bash tests/compat/storm-vm.sh [storm_overhead.py args]
# Default args: --reps 6 --count 100000 --max-seconds 8 --ready-timeout 400 --only "tcpq-top --batch (BPF)"
# (none is always run: it is every ratio's baseline; each rep pays one bcc compile, ~1 min). The guest has no C headers, so bench/storm.c
# is built here (Debian 12 on both sides: the same glibc). Under QEMU TCG every instruction is
# emulated: the ratio says how much the probes slow the emulated kernel's own storm, not what
# they cost on hardware (docs/COMPATIBILITY.md, "Storm ratio").
# Results: bench/results/storm_overhead-<kernel>.json of the shared tree, the printed table in
# $TQ_COMPAT_LOGS/storm-<kernel>.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=$(cd "${TQ_COMPAT_TREE:-$HERE/../..}" && pwd)
K=${KERNEL:-6.1}
LOGS=${TQ_COMPAT_LOGS:-/var/tmp/tq-compat}
case "$K" in 6.1|5.10) ;; *) echo "storm-vm.sh: KERNEL must be 6.1 or 5.10, not '$K'" >&2; exit 2 ;; esac
if [ "$(id -u)" -ne 0 ]; then echo "storm-vm.sh: needs root (boots the VM image)" >&2; exit 2; fi
if [ ! -x "$TREE/.venv/bin/python" ]; then echo "storm-vm.sh: $TREE/.venv missing: run make deps first" >&2; exit 2; fi
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--reps 6 --count 100000 --max-seconds 8 --ready-timeout 400
                               --only "tcpq-top --batch (BPF)")
vmdir=/var/tmp/tq-vm; [ "$K" = 5.10 ] && vmdir=/var/tmp/tq-vm-5.10
vmdir=${TQ_VM_DIR:-$vmdir}
KERNEL=$K TQ_VM_DIR=$vmdir bash "$HERE/vm/build.sh"
mkdir -p "$LOGS" "$TREE/bench/results"
exe=$TREE/bench/results/storm-vm.bin   # under the shared tree: the guest sees it at /mnt/share
gcc -O2 -pthread -o "$exe" "$TREE/bench/storm.c"
trap 'rm -f "$exe"' EXIT
cmd="TQBENCH_RESULTS=/tmp/tq-storm PYTHONPATH=/mnt/share .venv/bin/python bench/storm_overhead.py"
cmd+=" --storm /mnt/share/bench/results/storm-vm.bin $(printf '%q ' "${args[@]}")"
cmd+=" && cp /tmp/tq-storm/storm_overhead.json bench/results/storm_overhead-$K.json"
log="$LOGS/storm-$K.log"
t0=$(date +%s)
set +e
TQ_VM_DIR=$vmdir bash "$HERE/vm/run.sh" --share "$TREE" --timeout "${TQ_VM_TIMEOUT:-2400}" "$cmd" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo "storm-vm.sh: kernel $K: rc=$rc in $(( $(date +%s) - t0 )) s (commit $(git -C "$TREE" rev-parse --short HEAD 2>/dev/null || echo ?)), log $log" | tee -a "$log"
exit "$rc"
