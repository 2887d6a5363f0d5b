#!/bin/bash
# Runs INSIDE the test VM (tests/compat/run-vm.sh shares the checkout at /mnt/share).
# The guest has no network: python, bcc, bpftool and iproute2 come with the image,
# everything else from the checkout's .venv (made on the host by `make deps` with
# the same Debian 12 /usr/bin/python3, so it runs here unchanged).
set -u
cd /mnt/share
export PYTHONPATH=/mnt/share PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# one results file per kernel: two guests may share the checkout at once
export TQ_COMPAT_RESULTS=/tmp/tq-compat-results.jsonl
rm -f "$TQ_COMPAT_RESULTS"
T=/sys/kernel/tracing
echo "== kernel $(uname -r)"
for e in sock/sk_data_ready sock/inet_sock_set_state tcp/tcp_retransmit_synack tcp/tcp_send_reset \
         tcp/tcp_receive_reset syscalls/sys_exit_accept4 syscalls/sys_exit_accept; do
  [ -e $T/events/$e ] && echo "tracepoint $e: yes" || echo "tracepoint $e: no"
done
for f in rx_sk reason; do
  grep -q "field:.* $f;" $T/events/skb/kfree_skb/format && echo "kfree_skb $f: yes" || echo "kfree_skb $f: no"
done
[ -e $T/kprobe_events ] && echo "kprobes: yes" || echo "kprobes: no"
[ -e /lib/modules/$(uname -r)/build/include/generated/autoconf.h ] && echo "headers for $(uname -r): yes"
echo "== pytest $*"
.venv/bin/python -m pytest -p no:cacheprovider -q -rfEs "$@"
rc=$?
[ $rc -eq 5 ] && { echo "guest.sh: pytest collected no tests"; rc=1; }
echo "== left behind (all must be empty)"
progs=$(bpftool prog show 2>/dev/null | grep -E ' name tq_|^[0-9]+: tracing +name tcp ' || true)
kprobes=$(cat $T/kprobe_events 2>/dev/null || true)
netns=$(ip netns list 2>/dev/null || true)
echo "tq_ programs: ${progs:-none}"; echo "kprobe_events: ${kprobes:-none}"; echo "netns: ${netns:-none}"
[ -z "$progs$kprobes$netns" ] || rc=1
echo "== results"
cat "$TQ_COMPAT_RESULTS" 2>/dev/null
exit $rc
