"""Which kprobe fallback serves what, decided from hooks + kallsyms (no kernel needed),
and the fallback programs pass this kernel's verifier (root + bcc; loaded, not attached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcptop_q.probes import kprobes, tracefs
from tcptop_q.probes.btf import Btf
from tests.conftest import need

HAVE_BTF = Path("/sys/kernel/btf/vmlinux").exists()
needs_btf = pytest.mark.usefixtures("btf_required")  # fails, not skips, when CI=true

ALL = frozenset({"sock_def_readable", "inet_csk_reqsk_queue_add", "tcp_v4_syn_recv_sock",
                 "tcp_v6_syn_recv_sock", "tcp_conn_request"})
TRACEPOINTS_6_18 = {"queued": "tracepoint:sock:sk_data_ready", "peak_accept_queue": "tracepoint:sock:sk_data_ready",
                    "listen_overflow_drops": "tracepoint:skb:kfree_skb", "transitions": "tracepoint:sock:inet_sock_set_state"}
TRACEPOINTS_6_1 = {"transitions": "tracepoint:sock:inet_sock_set_state", "synack_retrans": "tracepoint:tcp:tcp_retransmit_synack"}


@pytest.fixture(scope="module")
def btf() -> Btf:
    need(HAVE_BTF, "no BTF at /sys/kernel/btf/vmlinux")
    return Btf.vmlinux()


def test_kernel_with_the_tracepoints_needs_no_kprobe(btf: Btf) -> None:
    plan = kprobes.plan_fallbacks(TRACEPOINTS_6_18, btf, kprobes=True, functions=ALL)
    assert not plan.used and plan.hooks == {} and plan.body() == ""


def test_6_1_gets_every_fallback(btf: Btf) -> None:
    plan = kprobes.plan_fallbacks(TRACEPOINTS_6_1, btf, kprobes=True, functions=ALL)
    assert plan.hooks == {
        "queued": "kprobe:sock_def_readable",
        "peak_accept_queue": "kprobe:sock_def_readable",
        "listen_overflow_drops": "kprobe:tcp_v4_syn_recv_sock+tcp_v6_syn_recv_sock",
        "syn_overflows": "kprobe:tcp_conn_request",
    }
    assert [fn for _k, fn, _p in plan.attach] == [
        "sock_def_readable", "tcp_v4_syn_recv_sock", "tcp_v6_syn_recv_sock", "tcp_conn_request"]
    # Offsets come from BTF; the sizes with them (u16 sk_ack_backlog before 5.x).
    for macro in ("TQ_OFF_SK_ACK_BACKLOG", "TQ_SZ_SK_ACK_BACKLOG", "TQ_OFF_ICSK_QLEN", "TQ_OFF_NET_SYNCOOKIES",
                  "TQ_OFF_SKB_PROTOCOL", "TQ_OFF_SKB_TW_ISN" if btf.has_struct("tcp_skb_cb") else "TQ_KPROBES"):
        assert macro in plan.defines, macro
    assert plan.defines["TQ_SZ_SK_ACK_BACKLOG"] in ("2", "4")
    body = plan.body()
    for _k, _fn, prog in plan.attach:
        assert f"int {prog}(struct pt_regs *ctx)" in body


def test_inlined_queue_add_is_not_a_candidate() -> None:
    """inet_csk_reqsk_queue_add is in Debian 6.1's kallsyms yet inlined into
    inet_csk_complete_hashdance (a kprobe there saw 0 of 6 children in the VM)."""
    assert [fn for fn, _ in kprobes.ACCEPT_CANDIDATES] == ["sock_def_readable"]


def test_missing_or_blacklisted_functions_leave_metrics_unserved(btf: Btf) -> None:
    no_v6 = kprobes.plan_fallbacks(TRACEPOINTS_6_1, btf, kprobes=True, functions=ALL - {"tcp_v6_syn_recv_sock"})
    assert no_v6.hooks["listen_overflow_drops"] == "kprobe:tcp_v4_syn_recv_sock"
    assert any("IPv6" in n for n in no_v6.notes)
    black = kprobes.plan_fallbacks(TRACEPOINTS_6_1, btf, kprobes=True, functions=ALL,
                                   blacklist=frozenset({"sock_def_readable", "tcp_v4_syn_recv_sock"}))
    assert "queued" not in black.hooks and "listen_overflow_drops" not in black.hooks
    assert "syn_overflows" not in black.hooks  # only with third-ACK overflows counted too
    none = kprobes.plan_fallbacks(TRACEPOINTS_6_1, btf, kprobes=False, functions=ALL)
    assert not none.used and any("CONFIG_KPROBES" in n for n in none.notes)


def test_kallsyms_reader_takes_whole_names_only(tmp_path: Path) -> None:
    f = tmp_path / "kallsyms"
    f.write_text("0000000000000000 T tcp_conn_request\n0000000000000000 t tcp_conn_request.cold\n"
                 "0000000000000000 t tcp_v6_syn_recv_sock\n0000000000000000 t foo.isra.0\n"
                 "0000000000000000 D sock_def_readable\n")
    assert kprobes.kernel_functions(f) == {"tcp_conn_request", "tcp_conn_request.cold", "tcp_v6_syn_recv_sock", "foo.isra.0"}
    assert kprobes.kernel_functions(f, wanted=kprobes.all_functions()) == {"tcp_conn_request", "tcp_v6_syn_recv_sock"}
    bl = tmp_path / "blacklist"
    bl.write_text("0xffffffff81000000-0xffffffff81000010\tsock_def_readable\n")
    assert kprobes.kprobe_blacklist([bl, tmp_path / "missing"]) == {"sock_def_readable"}


@needs_btf
def test_fallback_programs_pass_the_verifier() -> None:
    """The whole 6.1-shaped program (no sk_data_ready, kfree_skb without rx_sk, kprobes)
    compiles and every program loads on this kernel (not attached: 6.18 here has no kprobes)."""
    need(os.geteuid() == 0, "needs root to load BPF programs")
    try:
        import bcc
    except ImportError:
        need(False, "needs bcc")
    from tcptop_q.probes import bpf
    from tcptop_q.probes.kheaders import find_kernel_source
    from tests.test_bpf_units import OLD_KFREE_SKB, _fake_formats

    formats = _fake_formats(sk_data_ready=None, kfree_skb=tracefs.parse_format("skb", "kfree_skb", OLD_KFREE_SKB))
    plan = bpf.build_plan(formats=formats, kprobes=True, kallsyms=ALL)
    assert {fn for kind, _t, fn in plan.attach if kind == "kprobe"} == {
        "tq_kp_def_readable", "tq_kp_syn_recv4", "tq_kp_syn_recv6", "tq_kp_conn_request"}
    src, _ = find_kernel_source()
    if src:
        os.environ["BCC_KERNEL_SOURCE"] = src
    b = bcc.BPF(text=plan.body.encode(), cflags=plan.cflags)
    try:
        for kind, _target, fn in [*plan.attach, *plan.fallbacks.values()]:  # raw ones and their classic twins
            b.load_func(fn.encode(), {"kprobe": bcc.BPF.KPROBE, "raw_tracepoint": bcc.BPF.RAW_TRACEPOINT}.get(
                kind, bcc.BPF.TRACEPOINT))
    finally:
        b.cleanup()
