"""Record the kernel facts the probe plan is chosen from, as small fixture files for the
root-free plan tests (tests/compat/test_fallback_plan_kernels.py).

    python3 tests/compat/capture_facts.py tests/compat/fixtures/<kernel>   # as root, in the guest

Writes: uname (release + version string), <category>_<event>.format for each tracepoint
the probes may use (absent ones listed in missing.txt), kallsyms.txt (only the names of the
candidate kprobe functions that this kernel has, with their symbol type, the accept path's
inet_csk_accept among them), blacklist.txt (which of those the kernel refuses to kprobe),
and btf.json: the offset and size of every struct member the plan reads
(probes/plan.py SK_FIELDS, NETNS_FIELDS, LINK_FIELDS, SNT_SYNACK, FD_FIELDS and the
kprobe fallbacks' fields), from /sys/kernel/btf/vmlinux, whether struct bpf_ringbuf
exists, the top-level layouts the plan reads when tracefs is unreadable
(syscall_trace_exit, trace_event_raw_<event or its event class>), enum skb_drop_reason and
the raw tracepoints' arguments (btf_trace_<event> typedefs).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tcptop_q.probes import kprobes, tracefs  # noqa: E402
from tcptop_q.probes import plan as probe_plan  # noqa: E402
from tcptop_q.probes.btf import Btf, BtfError  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = [("sock", "inet_sock_set_state"), ("sock", "sk_data_ready"), ("skb", "kfree_skb"),
          ("tcp", "tcp_retransmit_synack"), ("tcp", "tcp_send_reset"), ("tcp", "tcp_receive_reset"),
          ("syscalls", "sys_exit_accept4"), ("syscalls", "sys_exit_accept"),
          ("syscalls", "sys_enter_accept4"), ("syscalls", "sys_enter_accept")]
# Functions a probe might use, also the ones we decided against (to show why).
FUNCTIONS = set(kprobes.all_functions()) | {"inet_csk_reqsk_queue_add", "inet_csk_complete_hashdance",
                                            probe_plan.KRETPROBE_ACCEPT[0], "tcp_child_process", "tcp_v4_do_rcv"}


def plan_fields() -> list[tuple[str, str]]:
    """Every (struct, member path) probes/plan.py reads from BTF, in its own tables."""
    out = []
    for table in (probe_plan.SK_FIELDS, probe_plan.NETNS_FIELDS, probe_plan.LINK_FIELDS, probe_plan.FD_FIELDS,
                  probe_plan.RAW_FIELDS):
        out += list(table.values())
    return [*out, probe_plan.SNT_SYNACK[1]]


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
    blacklist = kprobes.kprobe_blacklist()
    (out / "blacklist.txt").write_text("".join(f"{fn}\n" for fn in sorted(FUNCTIONS & blacklist)))
    btf = Btf.vmlinux()
    fields: dict[str, object] = {}
    wanted = [*plan_fields(), *kprobes.FB_FIELDS.values(), *kprobes.SYN_FIELDS.values(),
              kprobes.SKB_PROTOCOL, *kprobes.TW_ISN,
              ("sock", "sk_drops"), ("sock", "sk_rcvbuf"), ("sock", "sk_data_ready"), ("sock", "sk_wq")]
    for sname, path in wanted:
        try:
            f = btf.field(sname, path)
            fields[f"{sname}.{path}"] = {"offset": f.offset, "size": f.size}
        except BtfError as exc:
            fields[f"{sname}.{path}"] = {"error": str(exc)}
    layouts: dict[str, object] = {}
    for sname in ["syscall_trace_exit"] + [name for cat, ev, _fn, _f in probe_plan.TRACEPOINTS if cat != "syscalls"
                                           for name in tracefs.btf_struct_names(ev)]:
        try:
            layouts[sname] = [list(m) for m in btf.layout(sname)]
        except BtfError as exc:
            layouts[sname] = {"error": str(exc)}
    protos: dict[str, object] = {}  # raw tracepoint arguments (btf_trace_<event> typedefs)
    for cat, ev, _fn, _f in probe_plan.TRACEPOINTS:
        if cat == "syscalls":
            continue
        try:
            protos[ev] = btf.trace_proto(ev)
        except BtfError as exc:
            protos[ev] = {"error": str(exc)}
    enums: dict[str, object] = {}
    try:
        enums["skb_drop_reason"] = {str(v): n for v, n in sorted(btf.enum_values("skb_drop_reason").items())}
    except BtfError as exc:
        enums["skb_drop_reason"] = {"error": str(exc)}
    facts = {"fields": fields, "layouts": layouts, "enums": enums, "protos": protos,
             "structs": {s: btf.has_struct(s) for s in ("bpf_ringbuf", "tcp_skb_cb", "net")}}
    (out / "btf.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    print(f"capture_facts: {len(os.listdir(out))} files in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
