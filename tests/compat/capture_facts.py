"""Record the kernel facts the probe plan is chosen from, as small fixture files for the
root-free plan tests (tests/compat/test_fallback_plan_kernels.py).

    python3 tests/compat/capture_facts.py tests/compat/fixtures/<kernel>   # as root, in the guest

Writes: uname (release + version string), <category>_<event>.format for each tracepoint
the probes may use (absent ones listed in missing.txt), kallsyms.txt (only the names of the
candidate kprobe functions that this kernel has, with their symbol type), and btf.json (the
offset and size of every struct member the programs read, from /sys/kernel/btf/vmlinux,
plus whether struct bpf_ringbuf exists).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tcptop_q.probes import kprobes  # noqa: E402
from tcptop_q.probes import plan as probe_plan  # noqa: E402
from tcptop_q.probes.btf import Btf, BtfError  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = [("sock", "inet_sock_set_state"), ("sock", "sk_data_ready"), ("skb", "kfree_skb"),
          ("tcp", "tcp_retransmit_synack"), ("tcp", "tcp_send_reset"), ("tcp", "tcp_receive_reset"),
          ("syscalls", "sys_exit_accept4"), ("syscalls", "sys_exit_accept"),
          ("syscalls", "sys_enter_accept4"), ("syscalls", "sys_enter_accept")]
# Functions a probe might use, also the ones we decided against (to show why).
FUNCTIONS = set(kprobes.all_functions()) | {"inet_csk_reqsk_queue_add", "inet_csk_complete_hashdance",
                                            "inet_csk_accept", "tcp_child_process", "tcp_v4_do_rcv"}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "uname").write_text(f"{platform.release()}\n{platform.version()}\n")
    missing = []
    for cat, ev in EVENTS:
        f = TRACEFS / "events" / cat / ev / "format"
        if f.exists():
            (out / f"{cat}_{ev}.format").write_text(f.read_text())
        else:
            missing.append(f"{cat}:{ev}")
    (out / "missing.txt").write_text("".join(m + "\n" for m in missing))
    (out / "kprobes").write_text("yes\n" if (TRACEFS / "kprobe_events").exists() else "no\n")
    lines = []
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].split(".")[0] in FUNCTIONS:
                lines.append(f"0000000000000000 {parts[1]} {parts[2]}\n")  # addresses left out
    (out / "kallsyms.txt").write_text("".join(sorted(set(lines), key=lambda s: s.split()[2])))
    btf = Btf.vmlinux()
    fields: dict[str, object] = {}
    wanted = (list(probe_plan.SK_FIELDS.values()) + list(probe_plan.NETNS_FIELDS.values()) + list(kprobes.FB_FIELDS.values())
              + list(kprobes.SYN_FIELDS.values()) + [kprobes.SKB_PROTOCOL, *kprobes.TW_ISN]
              + [("sock", "sk_ack_backlog"), ("sock", "sk_max_ack_backlog"), ("sock", "sk_drops"),
                 ("sock", "sk_rcvbuf"), ("sock", "sk_data_ready"), ("sock", "sk_wq")])
    for sname, path in wanted:
        try:
            f = btf.field(sname, path)
            fields[f"{sname}.{path}"] = {"offset": f.offset, "size": f.size}
        except BtfError as exc:
            fields[f"{sname}.{path}"] = {"error": str(exc)}
    facts = {"fields": fields, "structs": {s: btf.has_struct(s) for s in ("bpf_ringbuf", "tcp_skb_cb", "net")}}
    (out / "btf.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    print(f"capture_facts: {len(os.listdir(out))} files in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
