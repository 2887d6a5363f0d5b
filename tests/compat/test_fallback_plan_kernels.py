"""The probe plan chosen from each kernel's own recorded facts, without that kernel: format
files, kallsyms names and BTF member offsets/sizes captured in the 5.10 and 6.1 guests and on
the 6.18 host by tests/compat/capture_facts.py (tests/compat/fixtures/<kernel>/). Root-free.

What it pins: hooks follow the files (5.10 and 6.1 have the same tracepoints missing, so the
same kprobes), struct offsets and sizes are BTF's (sk_ack_backlog moved by 24 bytes between
5.10 and 6.1), the 5.10 reset tracepoint layouts (no `family`) still give the local port, and
a compiler clone in kallsyms (`tcp_conn_request.cold`) is not the function, and the accept
path follows what each kernel has: kretprobe inet_csk_accept where kprobes exist (5.10, 6.1),
the accept/accept4 syscall exits elsewhere (6.18), with BTF's offsets for the fd walk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tcptop_q.probes import kprobes, tracefs
from tcptop_q.probes import plan as probe_plan
from tcptop_q.probes.btf import BtfError, Field

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KERNELS = ("5.10", "6.1", "6.18")


class RecordedBtf:
    """The member offsets/sizes a guest's BTF gave (btf.json), answering as Btf does."""

    def __init__(self, kernel: str) -> None:
        facts = json.loads((FIXTURES / kernel / "btf.json").read_text())
        self.fields = facts["fields"]
        self.structs = facts["structs"]
        self.layouts = facts["layouts"]
        self.enums = facts["enums"]
        self.protos = facts.get("protos", {})

    def field(self, struct_name: str, path: str) -> Field:
        f = self.fields.get(f"{struct_name}.{path}")
        if f is None or "error" in f:
            raise BtfError(f"struct {struct_name} has no member {path}")
        return Field(f["offset"], f["size"])

    def has_struct(self, name: str) -> bool:
        return bool(self.structs.get(name))

    def layout(self, struct_name: str) -> list[tuple[str, int, int, int, bool, bool]]:
        got = self.layouts.get(struct_name)
        if not isinstance(got, list):
            raise BtfError(f"no struct {struct_name} in BTF")
        return [tuple(m) for m in got]  # type: ignore[misc]

    def trace_proto(self, event: str) -> list[str]:
        got = self.protos.get(event)
        if not isinstance(got, list):
            raise BtfError(f"no btf_trace_{event} prototype in BTF")
        return list(got)

    def enum_values(self, name: str) -> dict[int, str]:
        got = self.enums.get(name)
        if got is None or "error" in got:
            raise BtfError(f"no enum {name} in BTF")
        return {int(v): n for v, n in got.items()}


def formats(kernel: str) -> dict[str, tracefs.TpFormat | None]:
    out: dict[str, tracefs.TpFormat | None] = {}
    for cat, ev, _fn, _f in probe_plan.TRACEPOINTS:
        f = FIXTURES / kernel / f"{cat}_{ev}.format"
        out[ev] = tracefs.parse_format(cat, ev, f.read_text()) if f.exists() else None
    return out


def formats_from_btf(kernel: str) -> dict[str, tracefs.TpFormat | None]:
    """What the plan reads when tracefs is unreadable (`tcpq-top --ebpf` as non-root):
    the same construction as probes/plan.py read_formats, from the recorded BTF."""
    btf = RecordedBtf(kernel)
    out: dict[str, tracefs.TpFormat | None] = {}
    for cat, ev, _fn, _f in probe_plan.TRACEPOINTS:
        if cat == "syscalls":
            out[ev] = probe_plan._syscall_exit_from_btf(btf, ev)  # type: ignore[arg-type]
        else:
            out[ev] = tracefs.format_from_btf(btf, cat, ev, {"reason": ("skb_drop_reason", "SKB_DROP_REASON_")}
                                              if ev == "kfree_skb" else None)
    return out


def plan(kernel: str, accept_hook: str | None = None, from_btf: bool = False,
         tracepoints: str | None = None) -> probe_plan.Plan:
    d = FIXTURES / kernel
    return probe_plan.build_plan(
        btf=RecordedBtf(kernel),  # type: ignore[arg-type]
        formats=formats_from_btf(kernel) if from_btf else formats(kernel),
        kprobes=(d / "kprobes").read_text().strip() == "yes",
        kallsyms=kprobes.kernel_functions(d / "kallsyms.txt",
                                          wanted=(*kprobes.all_functions(), probe_plan.KRETPROBE_ACCEPT[0])),
        blacklist=frozenset((d / "blacklist.txt").read_text().split()),
        ringbuf=RecordedBtf(kernel).has_struct("bpf_ringbuf"),
        accept_hook=accept_hook,
        tracepoints=tracepoints,
    )


def test_fixtures_are_what_they_say() -> None:
    assert (FIXTURES / "5.10/uname").read_text().startswith("5.10.")
    assert (FIXTURES / "6.1/uname").read_text().startswith("6.1.")
    assert (FIXTURES / "6.18/uname").read_text().startswith("6.18.")
    # the facts the plans below rest on
    assert "sock:sk_data_ready" in (FIXTURES / "5.10/missing.txt").read_text().split()
    assert "sock:sk_data_ready" in (FIXTURES / "6.1/missing.txt").read_text().split()
    k510, k61 = formats("5.10")["kfree_skb"], formats("6.1")["kfree_skb"]
    assert k510 is not None and k61 is not None
    assert "reason" not in k510.fields and "rx_sk" not in k510.fields  # drop reasons: 5.17
    assert "reason" in k61.fields and "rx_sk" not in k61.fields  # rx_sk: 6.11


@pytest.mark.parametrize("kernel", ["5.10", "6.1"])
def test_kernels_without_the_tracepoints_get_the_kprobes(kernel: str) -> None:
    p = plan(kernel)
    assert p.hooks == {
        "transitions": "raw_tracepoint:sock:inet_sock_set_state",
        "synack_retrans": "raw_tracepoint:tcp:tcp_retransmit_synack",
        "resets_sent": "raw_tracepoint:tcp:tcp_send_reset",
        "resets_received": "raw_tracepoint:tcp:tcp_receive_reset",
        "queued": "kprobe:sock_def_readable",
        "peak_accept_queue": "kprobe:sock_def_readable",
        "listen_overflow_drops": "kprobe:tcp_v4_syn_recv_sock+tcp_v6_syn_recv_sock",
        "syn_overflows": "kprobe:tcp_conn_request",
        "handshake": "kprobe:sock_def_readable",
        "accepted": "kretprobe:inet_csk_accept",
        "accept_wait": "kretprobe:inet_csk_accept",
    }
    # other_rx_drops / drop_reasons: null, and the notes say why
    assert any("rx_sk" in n for n in p.notes)
    assert any("sk_data_ready" in n for n in p.notes)
    # tcp_conn_request.cold is in both kallsyms: the whole name is attached, not the clone
    assert ("kprobe", "tcp_conn_request", "tq_kp_conn_request") in p.attach
    assert not [a for a in p.attach if "." in a[1]]


def test_6_18_needs_no_kprobe() -> None:
    p = plan("6.18")
    assert not [a for a in p.attach if a[0] == "kprobe"]
    assert p.hooks["queued"] == "raw_tracepoint:sock:sk_data_ready"
    assert p.hooks["listen_overflow_drops"] == p.hooks["drop_reasons"] == "raw_tracepoint:skb:kfree_skb"
    assert "syn_overflows" not in p.hooks


def test_offsets_and_sizes_are_each_kernels_btf() -> None:
    """sk_ack_backlog: u32 on all three, at 576 (5.10), 552 (6.1), 600 (6.18); the
    syncookies sysctl a u8 at 979 / 1123 / 1343. Nothing is assumed from one kernel."""
    seen = {}
    for kernel in KERNELS:
        btf = RecordedBtf(kernel)
        d = plan(kernel).defines
        assert d["TQ_OFF_SK_ACK_BACKLOG"] == str(btf.field("sock", "sk_ack_backlog").offset)
        assert d["TQ_OFF_SK_MAX_ACK_BACKLOG"] == str(btf.field("sock", "sk_max_ack_backlog").offset)
        assert d["TQ_OFF_SK_NET"] == str(btf.field("sock", "__sk_common.skc_net.net").offset)
        assert d["TQ_OFF_NET_INUM"] == str(btf.field("net", "ns.inum").offset)
        seen[kernel] = int(d["TQ_OFF_SK_ACK_BACKLOG"])
        if kernel != "6.18":  # the fallbacks' own fields, with their BTF sizes
            assert d["TQ_SZ_SK_ACK_BACKLOG"] == str(btf.field("sock", "sk_ack_backlog").size) == "4"
            assert d["TQ_OFF_NET_SYNCOOKIES"] == str(btf.field("net", "ipv4.sysctl_tcp_syncookies").offset)
            assert d["TQ_SZ_NET_SYNCOOKIES"] == str(btf.field("net", "ipv4.sysctl_tcp_syncookies").size)
            assert d["TQ_OFF_ICSK_QLEN"] == str(btf.field("inet_connection_sock", "icsk_accept_queue.qlen").offset)
            assert d["TQ_OFF_SKB_PROTOCOL"] == str(btf.field("sk_buff", "protocol").offset)
            assert d["TQ_OFF_SKB_TW_ISN"] == str(btf.field("sk_buff", "cb").offset
                                                 + btf.field("tcp_skb_cb", "tcp_tw_isn").offset)
    assert seen == {"5.10": 576, "6.1": 552, "6.18": 600}


def test_5_10_reset_layouts_give_the_local_port() -> None:
    """5.10's tcp_send_reset / tcp_receive_reset have no `family` (so saddr moves), but sport
    is there: the program reads it at the format file's offset."""
    f = formats("5.10")
    send, recv = f["tcp_send_reset"], f["tcp_receive_reset"]
    assert send is not None and recv is not None
    assert "family" not in send.fields and "family" not in recv.fields
    assert (send.fields["skaddr"].offset, send.fields["sport"].offset) == (16, 28)
    assert (recv.fields["skaddr"].offset, recv.fields["sport"].offset) == (8, 16)
    p = plan("5.10")
    assert "TQ_SEND_RESET_HAS_SPORT" in p.defines and "TQ_RECEIVE_RESET_HAS_SPORT" in p.defines
    assert 'offsetof(struct tq_tp_tcp_send_reset, sport) == 28' in p.body
    assert 'offsetof(struct tq_tp_tcp_receive_reset, sport) == 16' in p.body
    assert 'offsetof(struct tq_tp_tcp_send_reset, skaddr) == 16' in p.body


def test_ebpf_text_of_5_10_names_every_hook() -> None:
    """What `tcpq-top --ebpf` prints on 5.10 starts with the generated defines and notes."""
    text = plan("5.10").text()
    assert "// ---- attached: " in text
    for prog in ("tq_kp_def_readable -> kprobe:sock_def_readable", "tq_kp_syn_recv4 -> kprobe:tcp_v4_syn_recv_sock",
                 "tq_kp_conn_request -> kprobe:tcp_conn_request",
                 "tq_r_set_state -> raw_tracepoint:sock:inet_sock_set_state"):
        assert prog in text
    assert "// ---- note: " in text and "int tq_kp_def_readable(struct pt_regs *ctx)" in text


def test_send_reset_port_from_each_layout() -> None:
    """tcp_send_reset: `sport` on 5.10 and 6.1; on 6.18 a struct sockaddr_in6 `saddr[28]`
    (port at bytes 2-3) and a `reason`, the layout of 6.10+ where sk may be NULL."""
    assert "TQ_SEND_RESET_HAS_SPORT" in plan("6.1").defines
    new = plan("6.18")
    fmt = formats("6.18")["tcp_send_reset"]
    assert fmt is not None and "sport" not in fmt.fields and fmt.fields["saddr"].size == 28
    assert "TQ_SEND_RESET_SOCKADDR" in new.defines and "TQ_SEND_RESET_HAS_SPORT" not in new.defines


def test_accept_facts_recorded_per_kernel() -> None:
    """What the accept path is chosen from: kprobes and a whole-name, not blacklisted
    inet_csk_accept on 5.10 and 6.1; no kprobes on 6.18; accept4/accept exits with a
    `long ret` at 16 on all three (the tracefs files and BTF's syscall_trace_exit agree)."""
    for kernel in KERNELS:
        d = FIXTURES / kernel
        syms = kprobes.kernel_functions(d / "kallsyms.txt")
        assert "inet_csk_accept" in syms, kernel
        assert "inet_csk_accept" not in (d / "blacklist.txt").read_text().split(), kernel
        assert (d / "kprobes").read_text().strip() == ("no" if kernel == "6.18" else "yes"), kernel
        tf, bf = formats(kernel), formats_from_btf(kernel)
        for ev in ("sys_exit_accept4", "sys_exit_accept"):
            a, b = tf[ev], bf[ev]
            assert a is not None and b is not None, (kernel, ev)
            assert (a.fields["ret"].offset, a.fields["ret"].size, a.fields["ret"].signed) == (16, 8, True)
            assert (b.fields["ret"].offset, b.fields["ret"].size) == (16, 8), (kernel, ev)


@pytest.mark.parametrize("kernel", ["5.10", "6.1"])
def test_auto_accept_hook_is_the_kretprobe_where_kprobes_exist(kernel: str) -> None:
    """`--accept-hook auto` on 5.10/6.1: kretprobe inet_csk_accept (return value only), no
    syscall tracepoint attached, no fd-walk offsets needed; the link offsets are BTF's."""
    btf = RecordedBtf(kernel)
    p = plan(kernel)
    assert ("kretprobe", "inet_csk_accept", "tq_krp_csk_accept") in p.attach
    assert not [a for a in p.attach if a[1].startswith("syscalls:")]
    assert "TQ_KRP_CSK_ACCEPT" in p.defines and "TQ_HAVE_ACCEPT_SYSCALL" not in p.defines
    assert "TQ_OFF_TASK_FILES" not in p.defines
    assert p.defines["TQ_OFF_ICSK_ACCEPT_TAIL"] == str(
        btf.field("inet_connection_sock", "icsk_accept_queue.rskq_accept_tail").offset)
    assert p.defines["TQ_OFF_REQ_SK"] == str(btf.field("request_sock", "sk").offset)
    assert p.defines["TQ_OFF_TREQ_SNT_SYNACK"] == str(btf.field("tcp_request_sock", "snt_synack").offset)
    assert probe_plan.IO_URING_NOTE not in p.notes  # the kretprobe sees io_uring accepts too


@pytest.mark.parametrize("kernel", KERNELS)
def test_syscall_accept_path_uses_each_kernels_fd_walk(kernel: str) -> None:
    """The syscall path (auto on 6.18, forced with --accept-hook syscall elsewhere): both
    exits attached, the task->files->fdt->fd[]->private_data->sk offsets from that kernel."""
    btf = RecordedBtf(kernel)
    p = plan(kernel, accept_hook=None if kernel == "6.18" else "syscall")
    hook = "tracepoint:syscalls:sys_exit_accept4+tracepoint:syscalls:sys_exit_accept"
    assert p.hooks["accepted"] == p.hooks["accept_wait"] == hook
    assert ("tracepoint", "syscalls:sys_exit_accept4", "tq_accept_exit") in p.attach
    assert ("tracepoint", "syscalls:sys_exit_accept", "tq_accept_exit") in p.attach
    assert not [a for a in p.attach if a[0] == "kretprobe"]
    for macro, (sname, path) in probe_plan.FD_FIELDS.items():
        assert p.defines[macro] == str(btf.field(sname, path).offset), (kernel, macro)
    assert probe_plan.IO_URING_NOTE in p.notes
    assert "offsetof(struct tq_tp_sys_exit_accept, ret) == 16" in p.body


def test_accept_offsets_differ_between_kernels() -> None:
    """task_struct.files and the accept queue's tail move between kernels (config, struct
    growth): each plan takes them from its own BTF, never from another kernel's."""
    files = {k: RecordedBtf(k).field("task_struct", "files").offset for k in KERNELS}
    tail = {k: RecordedBtf(k).field("inet_connection_sock", "icsk_accept_queue.rskq_accept_tail").offset
            for k in KERNELS}
    assert files == {"5.10": 2808, "6.1": 3048, "6.18": 1824}
    assert tail == {"5.10": 1000, "6.1": 1024, "6.18": 1040}
    for k in KERNELS:
        d = plan(k, accept_hook="syscall").defines
        assert (d["TQ_OFF_TASK_FILES"], d["TQ_OFF_ICSK_ACCEPT_TAIL"]) == (str(files[k]), str(tail[k]))


def test_kretprobe_forced_without_kprobes_says_why() -> None:
    p = plan("6.18", accept_hook="kretprobe")
    assert "accepted" not in p.hooks and "accept_wait" not in p.hooks
    assert any("inet_csk_accept" in n and "kprobes off" in n for n in p.notes)


@pytest.mark.parametrize("kernel", KERNELS)
def test_plan_from_btf_alone_is_the_tracefs_plan(kernel: str) -> None:
    """`tcpq-top --ebpf` without root reads layouts from BTF (trace_event_raw_*,
    syscall_trace_exit, enum skb_drop_reason): the same hooks and offsets as from the
    format files, on each kernel."""
    a, b = plan(kernel), plan(kernel, from_btf=True)
    tf, bf = formats(kernel), formats_from_btf(kernel)
    for _cat, ev, _fn, needed in probe_plan.TRACEPOINTS:
        t, f = tf[ev], bf[ev]
        if t is None:
            continue
        assert f is not None, (kernel, ev)  # tcp_receive_reset: only its class's struct in BTF
        for name in needed:
            if name in t.fields:
                assert (f.fields[name].offset, f.fields[name].size) == (t.fields[name].offset, t.fields[name].size)
    assert b.hooks == a.hooks
    assert b.attach == a.attach
    assert {k: v for k, v in b.defines.items()} == a.defines


# ---- raw tracepoints (BPF_PROG_TYPE_RAW_TRACEPOINT): chosen from each kernel's btf_trace_<event>

RAW = {"inet_sock_set_state": "tq_r_set_state", "sk_data_ready": "tq_r_data_ready",
       "kfree_skb": "tq_r_kfree_skb", "tcp_retransmit_synack": "tq_r_synack",
       "tcp_send_reset": "tq_r_send_reset", "tcp_receive_reset": "tq_r_recv_reset"}
CLASSIC = {"inet_sock_set_state": "tq_set_state", "sk_data_ready": "tq_data_ready", "kfree_skb": "tq_kfree_skb",
           "tcp_retransmit_synack": "tq_synack", "tcp_send_reset": "tq_send_reset", "tcp_receive_reset": "tq_recv_reset"}


def test_recorded_prototypes_are_each_kernels() -> None:
    """What the raw programs' argument positions come from: the typedefs recorded in each guest.
    kfree_skb grew `reason` (5.17) and `rx_sk` (6.11); tcp_send_reset a reason (6.10);
    sk_data_ready exists from 6.3."""
    protos = {k: RecordedBtf(k).protos for k in KERNELS}
    assert protos["5.10"]["kfree_skb"] == ["struct sk_buff *", "void *"]
    assert protos["6.1"]["kfree_skb"] == ["struct sk_buff *", "void *", "enum skb_drop_reason"]
    assert protos["6.18"]["kfree_skb"] == ["struct sk_buff *", "void *", "enum skb_drop_reason", "struct sock *"]
    assert protos["6.1"]["tcp_send_reset"] == ["struct sock *", "struct sk_buff *"]
    assert protos["6.18"]["tcp_send_reset"] == ["struct sock *", "struct sk_buff *", "enum sk_rst_reason"]
    for k in ("5.10", "6.1"):
        assert "error" in protos[k]["sk_data_ready"]
    for k in KERNELS:
        assert protos[k]["inet_sock_set_state"] == ["struct sock *", "int", "int"]


@pytest.mark.parametrize("kernel", KERNELS)
def test_raw_tracepoints_where_each_kernel_has_them(kernel: str) -> None:
    """Every tracepoint the plan uses is attached raw (its classic program kept as the fallback),
    with argument positions from that kernel's prototype and socket fields at its BTF offsets."""
    btf = RecordedBtf(kernel)
    p = plan(kernel)
    classic = plan(kernel, tracepoints="classic")
    used = {t.partition(":")[2] for k, t, _f in classic.attach if k == "tracepoint" and not t.startswith("syscalls:")}
    assert used == ({"inet_sock_set_state", "tcp_retransmit_synack", "tcp_send_reset", "tcp_receive_reset"}
                    | ({"sk_data_ready", "kfree_skb"} if kernel == "6.18" else set()))
    for ev in used:
        cat = next(t for _k, t, _f in classic.attach if t.endswith(":" + ev)).partition(":")[0]
        assert ("raw_tracepoint", f"{cat}:{ev}", RAW[ev]) in p.attach, (kernel, ev)
        assert ("tracepoint", f"{cat}:{ev}", CLASSIC[ev]) not in p.attach
        assert p.fallbacks[RAW[ev]] == ("tracepoint", f"{cat}:{ev}", CLASSIC[ev])
    # the same metrics, each served by the raw form of the same event
    assert p.hooks.keys() == classic.hooks.keys()
    raw_targets = [t for k, t, _f in p.attach if k == "raw_tracepoint"]
    assert p.hooks == probe_plan.raw_hooks(classic.hooks, raw_targets)
    assert probe_plan.raw_hooks(p.hooks, raw_targets, kind="tracepoint") == classic.hooks
    assert p.defines["TQ_RTP_SET_STATE_SK"] == "0"
    assert (p.defines["TQ_RTP_SET_STATE_OLD"], p.defines["TQ_RTP_SET_STATE_NEW"]) == ("1", "2")
    for macro, (sname, path) in probe_plan.RAW_FIELDS.items():
        assert p.defines[macro] == str(btf.field(sname, path).offset), (kernel, macro)
    assert p.defines["TQ_SZ_SK_PROTOCOL"] == "2"
    if kernel == "6.18":
        assert (p.defines["TQ_RTP_KFREE_SKB_RX_SK"], p.defines["TQ_RTP_KFREE_SKB_REASON"]) == ("3", "2")
        assert p.defines["TQ_RTP_DATA_READY_SK"] == "0"
    else:
        assert "TQ_RTP_KFREE_SKB" not in p.defines and "TQ_RTP_DATA_READY" not in p.defines
    # classic: no raw program attached, no raw define, and the notes say it was asked for
    assert not [a for a in classic.attach if a[0] == "raw_tracepoint"] and not classic.fallbacks
    assert not [d for d in classic.defines if d.startswith("TQ_RTP_")]
    assert any("--tracepoints classic" in n for n in classic.notes)


def test_inet_sock_set_state_offsets_differ_between_kernels() -> None:
    """inet_sport/inet_saddr/sk_protocol move between kernels: never one kernel's numbers."""
    got = {k: tuple(int(plan(k).defines[m]) for m in ("TQ_OFF_INET_SPORT", "TQ_OFF_INET_SADDR", "TQ_OFF_SK_PROTOCOL"))
           for k in KERNELS}
    assert got == {"5.10": (776, 768, 540), "6.1": (804, 784, 516), "6.18": (814, 808, 532)}


def test_unknown_prototype_keeps_the_classic_tracepoint() -> None:
    """A prototype of another shape (arguments moved or retyped) is not guessed at: that event
    stays classic and the note says why; the others stay raw."""
    btf = RecordedBtf("6.18")
    btf.protos = dict(btf.protos, inet_sock_set_state=["struct sock *", "int"],
                      kfree_skb=["struct sk_buff *", "void *", "struct sock *"])  # reason missing
    del btf.protos["tcp_receive_reset"]
    p = probe_plan.build_plan(btf=btf, formats=formats("6.18"), kprobes=False, kallsyms=frozenset(),  # type: ignore[arg-type]
                              blacklist=frozenset(), ringbuf=True)
    assert p.hooks["transitions"] == "tracepoint:sock:inet_sock_set_state"
    assert p.hooks["listen_overflow_drops"] == "tracepoint:skb:kfree_skb"
    assert p.hooks["resets_received"] == "tracepoint:tcp:tcp_receive_reset"
    assert p.hooks["queued"] == "raw_tracepoint:sock:sk_data_ready"
    assert any("inet_sock_set_state: classic" in n and "not the known shape" in n for n in p.notes)
    assert any("tcp_receive_reset: classic" in n for n in p.notes)
    assert "TQ_RTP_SET_STATE" not in p.defines and "TQ_RTP_KFREE_SKB" not in p.defines


def test_ebpf_text_names_the_raw_programs_and_their_fallbacks() -> None:
    text = plan("6.18").text()
    assert "tq_r_set_state -> raw_tracepoint:sock:inet_sock_set_state" in text
    assert "int tq_r_set_state(struct bpf_raw_tracepoint_args *ctx)" in text
    assert "int tq_set_state(struct tq_tp_inet_sock_set_state *args)" in text  # compiled as the fallback
    assert "// ---- if refused: tq_set_state -> tracepoint:sock:inet_sock_set_state" in text
