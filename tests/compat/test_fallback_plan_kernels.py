"""The probe plan chosen from each kernel's own recorded facts, without that kernel: format
files, kallsyms names and BTF member offsets/sizes captured in the 5.10 and 6.1 guests and on
the 6.18 host by tests/compat/capture_facts.py (tests/compat/fixtures/<kernel>/). Root-free.

What it pins: hooks follow the files (5.10 and 6.1 have the same tracepoints missing, so the
same kprobes), struct offsets and sizes are BTF's (sk_ack_backlog moved by 24 bytes between
5.10 and 6.1), the 5.10 reset tracepoint layouts (no `family`) still give the local port, and
a compiler clone in kallsyms (`tcp_conn_request.cold`) is not the function.
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

    def field(self, struct_name: str, path: str) -> Field:
        f = self.fields.get(f"{struct_name}.{path}")
        if f is None or "error" in f:
            raise BtfError(f"struct {struct_name} has no member {path}")
        return Field(f["offset"], f["size"])

    def has_struct(self, name: str) -> bool:
        return bool(self.structs.get(name))


def formats(kernel: str) -> dict[str, tracefs.TpFormat | None]:
    out: dict[str, tracefs.TpFormat | None] = {}
    for cat, ev, _fn, _f in (probe_plan.TP_SET_STATE, probe_plan.TP_DATA_READY, probe_plan.TP_KFREE_SKB, probe_plan.TP_SYNACK,
                             probe_plan.TP_SEND_RESET, probe_plan.TP_RECV_RESET):
        f = FIXTURES / kernel / f"{cat}_{ev}.format"
        out[ev] = tracefs.parse_format(cat, ev, f.read_text()) if f.exists() else None
    return out


def plan(kernel: str) -> probe_plan.Plan:
    d = FIXTURES / kernel
    return probe_plan.build_plan(
        btf=RecordedBtf(kernel),  # type: ignore[arg-type]
        formats=formats(kernel),
        kprobes=(d / "kprobes").read_text().strip() == "yes",
        kallsyms=kprobes.kernel_functions(d / "kallsyms.txt", wanted=kprobes.all_functions()),
        blacklist=frozenset(),
        ringbuf=RecordedBtf(kernel).has_struct("bpf_ringbuf"),
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
        "transitions": "tracepoint:sock:inet_sock_set_state",
        "synack_retrans": "tracepoint:tcp:tcp_retransmit_synack",
        "resets_sent": "tracepoint:tcp:tcp_send_reset",
        "resets_received": "tracepoint:tcp:tcp_receive_reset",
        "accepts": "kprobe:sock_def_readable",
        "peak_accept_queue": "kprobe:sock_def_readable",
        "listen_overflow_drops": "kprobe:tcp_v4_syn_recv_sock+tcp_v6_syn_recv_sock",
        "syn_overflows": "kprobe:tcp_conn_request",
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
    assert p.hooks["accepts"] == "tracepoint:sock:sk_data_ready"
    assert p.hooks["listen_overflow_drops"] == p.hooks["drop_reasons"] == "tracepoint:skb:kfree_skb"
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
                 "tq_kp_conn_request -> kprobe:tcp_conn_request", "tq_set_state -> tracepoint:sock:inet_sock_set_state"):
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
