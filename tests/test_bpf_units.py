"""The eBPF side's pure parts: BTF reader, format files, program generation, failure reasons.

No root needed, except where a test compares against the kernel's tracefs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tcptop_q.model import Transition
from tcptop_q.probes import tracefs
from tcptop_q.probes.bpf import BPF_C, BpfProbes, Timelines, build_plan, c_struct
from tcptop_q.probes.btf import Btf

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(ok: bool, reason: str) -> None:
    """Skip locally with a reason; in CI a missing prerequisite is a failure."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)
HAVE_BTF = Path("/sys/kernel/btf/vmlinux").exists()
needs_btf = pytest.mark.usefixtures("btf_required")  # fails, not skips, when CI=true

KFREE_SKB_FORMAT = """name: kfree_skb
ID: 1
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: "skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 77, "TCP_LISTEN_OVERFLOW" })
"""

# 6.1-era layouts: no rx_sk, no TCP_LISTEN_OVERFLOW; send_reset without skaddr at 8.
OLD_KFREE_SKB = KFREE_SKB_FORMAT.replace("\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n", "")


def test_format_parse_and_symbols() -> None:
    fmt = tracefs.parse_format("skb", "kfree_skb", KFREE_SKB_FORMAT)
    assert fmt.fields["rx_sk"].offset == 24 and fmt.fields["reason"].size == 4
    assert fmt.symbols("reason") == {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 77: "TCP_LISTEN_OVERFLOW"}
    assert fmt.symbols("protocol") == {}
    text = c_struct("tq_tp_kfree_skb", fmt)
    assert "u8 __pad0[8];" in text and "u64 rx_sk;" in text and "u32 reason;" in text
    assert "u8 __pad1[2];" in text  # protocol ends at 34, reason at 36


def test_unaligned_fields_become_byte_arrays() -> None:
    fmt = tracefs.parse_format("tcp", "x", "\tfield:__u8 saddr[4];\toffset:30;\tsize:4;\tsigned:0;\n"
                                          "\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;\n")
    text = c_struct("s", fmt)
    assert "u8 saddr[4];" in text and "u64 sock_cookie;" in text and "u8 __pad1[30];" in text


@needs_btf
def test_btf_offsets_are_plausible() -> None:
    btf = Btf.vmlinux()
    common = btf.field("sock", "__sk_common")
    assert common.offset == 0
    assert btf.field("sock", "__sk_common.skc_state").size == 1
    assert btf.field("sock", "__sk_common.skc_num").size == 2
    assert btf.field("sock", "__sk_common.skc_cookie").size == 8
    assert btf.field("sock", "sk_ack_backlog").size == 4
    assert btf.field("sock", "sk_max_ack_backlog").offset == btf.field("sock", "sk_ack_backlog").offset + 4
    assert btf.field("net", "ns.inum").size == 4
    with pytest.raises(Exception, match="no member"):
        btf.field("sock", "no_such_member")


def _fake_formats(**override):
    base = {
        "inet_sock_set_state": tracefs.parse_format("sock", "inet_sock_set_state", "".join(
            f"\tfield:{t} {n};\toffset:{o};\tsize:{s};\tsigned:0;\n" for t, n, o, s in [
                ("const void *", "skaddr", 8, 8), ("int", "oldstate", 16, 4), ("int", "newstate", 20, 4),
                ("__u16", "sport", 24, 2), ("__u16", "dport", 26, 2), ("__u16", "family", 28, 2),
                ("__u16", "protocol", 30, 2), ("__u8", "saddr[4]", 32, 4), ("__u8", "daddr[4]", 36, 4),
                ("__u8", "saddr_v6[16]", 40, 16), ("__u8", "daddr_v6[16]", 56, 16)])),
        "sk_data_ready": tracefs.parse_format("sock", "sk_data_ready", "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n"),
        "kfree_skb": tracefs.parse_format("skb", "kfree_skb", KFREE_SKB_FORMAT),
        "tcp_retransmit_synack": tracefs.parse_format("tcp", "tcp_retransmit_synack", "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n"),
        "tcp_send_reset": tracefs.parse_format("tcp", "tcp_send_reset", "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n"),
        "tcp_receive_reset": tracefs.parse_format("tcp", "tcp_receive_reset", "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n"),
    }
    base.update(override)
    return base


@needs_btf
def test_plan_follows_the_format_files_not_versions() -> None:
    plan = build_plan(formats=_fake_formats(), kprobes=False, tracepoints="classic")
    assert plan.defines["TQ_REASON_LISTEN_OVERFLOW"] == "77"  # decoded, not hard-coded
    assert plan.hooks["listen_overflow_drops"] == "tracepoint:skb:kfree_skb"
    assert plan.hooks["queued"] == "tracepoint:sock:sk_data_ready"
    assert {fn for _k, _t, fn in plan.attach} == {
        "tq_set_state", "tq_data_ready", "tq_kfree_skb", "tq_synack", "tq_send_reset", "tq_recv_reset"}

    old = build_plan(formats=_fake_formats(sk_data_ready=None, kfree_skb=tracefs.parse_format("skb", "kfree_skb", OLD_KFREE_SKB),
                                           tcp_receive_reset=None), kprobes=False, tracepoints="classic")
    for metric in ("queued", "peak_accept_queue", "listen_overflow_drops", "other_rx_drops", "resets_received"):
        assert metric not in old.hooks
    assert any("sk_data_ready" in n for n in old.notes) and any("rx_sk" in n for n in old.notes)

    # Kprobes serve only what the tracepoints leave unserved (probes/kprobes.py chooses them).
    fns = frozenset({"sock_def_readable", "tcp_v4_syn_recv_sock", "tcp_v6_syn_recv_sock", "tcp_conn_request"})
    fallback = build_plan(formats=_fake_formats(sk_data_ready=None), kprobes=True, kallsyms=fns, blacklist=frozenset(),
                          tracepoints="classic")
    assert fallback.hooks["queued"] == "kprobe:sock_def_readable"
    assert fallback.hooks["listen_overflow_drops"] == "tracepoint:skb:kfree_skb"
    assert [a for a in fallback.attach if a[0] == "kprobe"] == [("kprobe", "sock_def_readable", "tq_kp_def_readable")]
    assert "int tq_kp_def_readable(struct pt_regs *ctx)" in fallback.body
    none = build_plan(formats=_fake_formats(sk_data_ready=None), kprobes=False)
    assert "queued" not in none.hooks and not [a for a in none.attach if a[0] == "kprobe"]

    filtered = build_plan(port=8080, netns=4026531840, formats=_fake_formats(), kprobes=False)
    assert "-DTQ_FILTER_PORT=8080" in filtered.cflags and "-DTQ_FILTER_NETNS=4026531840" in filtered.cflags


@needs_btf
def test_program_text_is_the_file_plus_generated_parts() -> None:
    text = BpfProbes(port=443).program_text()
    assert BPF_C.read_text() in text
    assert "#define TQ_OFF_SK_STATE " in text and "#define TQ_FILTER_PORT 443" in text
    assert "struct tq_tp_inet_sock_set_state {" in text


@needs_btf
def test_program_text_without_root() -> None:
    """`tcpq-top --ebpf` as an ordinary user: layouts then come from BTF, nothing is loaded."""
    _need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root (and setpriv) to drop to nobody")
    code = "from tcptop_q.probes.bpf import BpfProbes; p = BpfProbes(); print(p.program_text()); print(p.state)"
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, "HOME": "/tmp"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "struct tq_tp_kfree_skb {" in out.stdout and "#define TQ_REASON_LISTEN_OVERFLOW" in out.stdout
    assert out.stdout.rstrip().endswith("off")


def test_off_without_privileges_is_one_line() -> None:
    _need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "needs root (and setpriv) to drop to nobody")
    code = ("from tcptop_q.probes.bpf import BpfProbes; p = BpfProbes(); p.start(); "
            "print(p.wait_ready(30), p.state, repr(p.error)); p.close()")
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, "HOME": "/tmp"},
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith("False off 'needs root"), out.stdout
    assert "\n" not in out.stdout.strip()


def test_timelines_take_the_tuple_from_syn_recv_to_established() -> None:
    tl = Timelines(max_sockets=2)

    def tr(t, sk, old, new, lport=80, raddr="10.0.0.2", rport=5000):
        return Transition(t, 1, sk, "ipv4", "10.0.0.1", lport, raddr, rport, old, new, None, 0, "x")

    tl.add(tr(1.0, 0xA, "LISTEN", "SYN_RECV", raddr="0.0.0.0", rport=0))
    tl.add(tr(2.0, 0xA, "SYN_RECV", "ESTABLISHED"))
    tl.add(tr(3.0, 0xA, "ESTABLISHED", "CLOSE_WAIT"))
    got = tl.by_tuple(1, "ipv4", "10.0.0.1", 80, "10.0.0.2", 5000)
    assert [(e.old, e.new, e.rport) for e in got] == [
        ("LISTEN", "SYN_RECV", 5000), ("SYN_RECV", "ESTABLISHED", 5000), ("ESTABLISHED", "CLOSE_WAIT", 5000)]
    # The same address reused by a new child starts a new timeline; the old one stays by tuple.
    tl.add(tr(4.0, 0xA, "CLOSE_WAIT", "CLOSE"))
    tl.add(tr(5.0, 0xA, "LISTEN", "SYN_RECV", raddr="0.0.0.0", rport=0))
    tl.add(tr(6.0, 0xA, "SYN_RECV", "ESTABLISHED", rport=6000))
    assert len(tl.by_tuple(1, "ipv4", "10.0.0.1", 80, "10.0.0.2", 5000)) == 4
    assert [e.time for e in tl.by_skaddr(1, 0xA)] == [5.0, 6.0]
    # LRU: a third socket evicts the oldest timeline.
    tl.add(tr(7.0, 0xB, "SYN_RECV", "ESTABLISHED", rport=7000))
    assert tl.by_tuple(1, "ipv4", "10.0.0.1", 80, "10.0.0.2", 5000) == []
    assert len(tl) == 2


@needs_btf
@pytest.mark.parametrize("variant", ["perf-buffer", "kprobe-accepts", "filters", "no-drop-reason"])
def test_fallback_programs_pass_the_verifier(variant: str) -> None:
    """Paths this kernel does not take by itself (older kernels): compile and load, not attached."""
    _need(os.geteuid() == 0, "needs root to load BPF programs")
    try:
        import bcc
    except ImportError:
        _need(False, "needs bcc (python3-bpfcc)")
    from tcptop_q.probes.kheaders import find_kernel_source

    formats = _fake_formats()
    kw: dict = {"kprobes": False}
    if variant == "perf-buffer":
        kw["ringbuf"] = False
    elif variant == "kprobe-accepts":
        formats = _fake_formats(sk_data_ready=None)
        kw.update(kprobes=True, kallsyms=frozenset({"sock_def_readable"}), blacklist=frozenset())
    elif variant == "filters":
        kw.update(port=8080, netns=4026531840)
    else:
        formats = _fake_formats(kfree_skb=tracefs.parse_format("skb", "kfree_skb", KFREE_SKB_FORMAT.replace(
            "\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n", "")))
    plan = build_plan(formats=formats, **kw)
    src, _ = find_kernel_source()
    if src:
        os.environ["BCC_KERNEL_SOURCE"] = src
    b = bcc.BPF(text=plan.body, cflags=plan.cflags)
    try:
        for kind, _target, fn in [*plan.attach, *plan.fallbacks.values()]:  # raw ones and their classic twins
            b.load_func(fn.encode(), {"kprobe": bcc.BPF.KPROBE, "raw_tracepoint": bcc.BPF.RAW_TRACEPOINT}.get(
                kind, bcc.BPF.TRACEPOINT))
    finally:
        b.cleanup()


def test_close_inside_read_is_deferred() -> None:
    """A SIGTERM handler calling close() while read() runs on the same thread must not
    tear bcc down under read(); read() does it on the way out."""
    p = BpfProbes()
    torn = []
    p._teardown = lambda: torn.append(True)  # type: ignore[method-assign]
    p.state = "live"
    p._bpf = object()

    def fake_read(_b):
        p.close()  # as if a signal handler ran here
        assert torn == [] and p.state == "off"
        raise SystemExit(0)  # the handler exits

    p._read = fake_read  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        p.read()
    assert torn == [True]
