"""Kprobe fallbacks, chosen at start for metrics whose tracepoint (or field) this kernel lacks.

Most production kernels (5.14-6.8: RHEL 9, Ubuntu 22.04/24.04, Debian 12,
Amazon Linux 2023) have sock:inet_sock_set_state and tcp:tcp_retransmit_synack
but neither sock:sk_data_ready (6.3+) nor rx_sk on skb:kfree_skb (6.11+). There,
tracepoints alone leave queued, peak depth and overflow attribution empty. Where
kprobes exist, these functions serve instead (read in the 6.1 sources, checked in
the Debian 12 VM, see docs/COMPATIBILITY.md):

    sock_def_readable      queued, peak_accept_queue. The function sock:sk_data_ready
                           fires in on 6.3+, so the numbers are the same by
                           construction; filtered to LISTEN in BPF. Called through
                           sk->sk_data_ready, so it can never be inlined away.
                           (inet_csk_reqsk_queue_add is in kallsyms on Debian's 6.1
                           but inlined into inet_csk_complete_hashdance: a kprobe
                           there saw 0 of 6 children. A symbol being listed does not
                           mean every call goes through it.)
    tcp_v4_syn_recv_sock,  third-ACK overflows (listen_overflow_drops): the first
    tcp_v6_syn_recv_sock   statement is `if (sk_acceptq_is_full(sk)) goto
                           exit_overflow;`, so entry with the queue full is one
                           overflow. v4 packets on a v6 socket pass through the v6
                           function into the v4 one: the v6 probe skips them.
    tcp_conn_request       SYN-path overflows (syn_overflows), counted directly
                           instead of derived from sk_drops: entry with the accept
                           queue full, unless the SYN is dropped first because the
                           SYN queue is full and syncookies are off.

Only exact, whole-symbol names count: a compiler clone (`tcp_conn_request.cold`,
`.isra.0`, `.constprop.0`) is not the function, and blacklisted symbols cannot
be probed. Nothing here imports bcc or textual; plan_fallbacks is pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .btf import Btf, BtfError

KALLSYMS = Path("/proc/kallsyms")
BLACKLISTS = (Path("/sys/kernel/debug/kprobes/blacklist"),)
BPF_C = Path(__file__).with_name("fallbacks.bpf.c")

QUEUED_METRICS = ("queued", "peak_accept_queue")
THIRD_ACK_METRIC = "listen_overflow_drops"
SYN_METRIC = "syn_overflows"

# Kernel functions, in order of preference, and the program attached to each.
ACCEPT_CANDIDATES = (("sock_def_readable", "tq_kp_def_readable"),)
THIRD_ACK_V4 = ("tcp_v4_syn_recv_sock", "tq_kp_syn_recv4")
THIRD_ACK_V6 = ("tcp_v6_syn_recv_sock", "tq_kp_syn_recv6")
SYN_PATH = ("tcp_conn_request", "tq_kp_conn_request")

# Struct fields the fallback programs read: macro -> (struct, member path).
# Sizes go with them (TQ_SZ_*): sk_ack_backlog was u16 before 5.x, the
# syncookies sysctl an int before 5.x and a u8 since.
FB_FIELDS = {
    "TQ_OFF_SK_ACK_BACKLOG": ("sock", "sk_ack_backlog"),
    "TQ_OFF_SK_MAX_ACK_BACKLOG": ("sock", "sk_max_ack_backlog"),
}
SYN_FIELDS = {
    "TQ_OFF_ICSK_QLEN": ("inet_connection_sock", "icsk_accept_queue.qlen"),
    "TQ_OFF_NET_SYNCOOKIES": ("net", "ipv4.sysctl_tcp_syncookies"),
}
SKB_PROTOCOL = ("sk_buff", "protocol")
TW_ISN = (("sk_buff", "cb"), ("tcp_skb_cb", "tcp_tw_isn"))


@dataclass
class FallbackPlan:
    """Additions to the tracepoint plan: -D flags, kprobes to attach, metric -> hook."""

    defines: dict[str, str] = field(default_factory=dict)
    attach: list[tuple[str, str, str]] = field(default_factory=list)  # ("kprobe", function, program)
    hooks: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def used(self) -> bool:
        return bool(self.attach)

    def body(self) -> str:
        """The C to append after tcpq.bpf.c ("" when no fallback is used)."""
        return BPF_C.read_text() if self.used else ""


def kernel_functions(path: Path = KALLSYMS, wanted: Iterable[str] | None = None) -> frozenset[str]:
    """Names of text symbols in kallsyms (names are readable without root; addresses are not)."""
    want = set(wanted) if wanted is not None else None
    out = set()
    with path.open() as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in ("t", "T"):
                continue
            name = parts[2]
            if want is None or name in want:
                out.add(name)
    return frozenset(out)


def kprobe_blacklist(paths: Iterable[Path] = BLACKLISTS) -> frozenset[str]:
    """Functions the kernel refuses to kprobe (empty when debugfs is unreadable)."""
    out = set()
    for p in paths:
        try:
            for line in p.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    out.add(parts[-1])
        except OSError:
            continue
    return frozenset(out)


def all_functions() -> tuple[str, ...]:
    return tuple(fn for fn, _ in ACCEPT_CANDIDATES) + (THIRD_ACK_V4[0], THIRD_ACK_V6[0], SYN_PATH[0])


def _offsets(btf: Btf, fields: dict[str, tuple[str, str]]) -> dict[str, str]:
    out = {}
    for macro, (sname, path) in fields.items():
        f = btf.field(sname, path)
        out[macro] = str(f.offset)
        out[macro.replace("TQ_OFF_", "TQ_SZ_")] = str(min(f.size, 4))
    return out


def plan_fallbacks(
    hooks: dict[str, str],
    btf: Btf,
    kprobes: bool,
    functions: frozenset[str] | None = None,
    blacklist: frozenset[str] = frozenset(),
) -> FallbackPlan:
    """Kprobes for what `hooks` (the tracepoint plan's metric -> hook) leaves unserved.

    `functions`: probe-able kernel functions (kallsyms); None reads /proc/kallsyms.
    """
    plan = FallbackPlan()
    need_queued = any(m not in hooks for m in QUEUED_METRICS)
    need_third = THIRD_ACK_METRIC not in hooks
    if not (need_queued or need_third):
        return plan
    if not kprobes:
        plan.notes.append("no kprobes on this kernel (CONFIG_KPROBES off): no fallback for missing tracepoints")
        return plan
    if functions is None:
        try:
            functions = kernel_functions(wanted=all_functions())
        except OSError as exc:
            plan.notes.append(f"cannot read /proc/kallsyms ({exc.strerror}): no kprobe fallbacks")
            return plan

    def have(fn: str) -> bool:
        return fn in functions and fn not in blacklist

    try:
        base = _offsets(btf, FB_FIELDS)
    except BtfError as exc:
        plan.notes.append(f"kprobe fallbacks off: BTF: {exc}")
        return plan

    if need_queued:
        found = [(fn, prog) for fn, prog in ACCEPT_CANDIDATES if have(fn)]
        if found:
            fn, prog = found[0]
            plan.defines["TQ_KP_DEF_READABLE"] = ""
            plan.attach.append(("kprobe", fn, prog))
            for m in QUEUED_METRICS:
                plan.hooks[m] = f"kprobe:{fn}"
        else:
            plan.notes.append("no probe-able sock_def_readable: queued/peak queue unknown")

    if need_third:
        if not have(THIRD_ACK_V4[0]):
            plan.notes.append("no probe-able tcp_v4_syn_recv_sock: third-ACK overflows not attributed")
        else:
            plan.defines["TQ_KP_SYN_RECV"] = ""
            plan.attach.append(("kprobe", *THIRD_ACK_V4))
            hook = f"kprobe:{THIRD_ACK_V4[0]}"
            if have(THIRD_ACK_V6[0]):
                try:
                    plan.defines["TQ_OFF_SKB_PROTOCOL"] = str(btf.field(*SKB_PROTOCOL).offset)
                    plan.attach.append(("kprobe", *THIRD_ACK_V6))
                    hook += f"+{THIRD_ACK_V6[0]}"
                except BtfError as exc:
                    plan.notes.append(f"IPv6 third-ACK overflows not attributed: BTF: {exc}")
            else:
                plan.notes.append("no probe-able tcp_v6_syn_recv_sock (IPv6 off?): IPv6 third-ACK overflows not attributed")
            plan.hooks[THIRD_ACK_METRIC] = hook
            # With third-ACK overflows counted, SYN-path ones are counted too: the
            # sk_drops derivation needs every other listener drop, which kfree_skb
            # without rx_sk cannot charge.
            if have(SYN_PATH[0]):
                try:
                    plan.defines.update(_offsets(btf, SYN_FIELDS))
                    try:
                        plan.defines["TQ_OFF_SKB_TW_ISN"] = str(btf.field(*TW_ISN[0]).offset + btf.field(*TW_ISN[1]).offset)
                    except BtfError:
                        plan.notes.append("no tcp_skb_cb.tcp_tw_isn: TIME_WAIT-recycled SYNs taken as new")
                    plan.defines["TQ_KP_CONN_REQUEST"] = ""
                    plan.attach.append(("kprobe", *SYN_PATH))
                    plan.hooks[SYN_METRIC] = f"kprobe:{SYN_PATH[0]}"
                except BtfError as exc:
                    plan.notes.append(f"SYN-path overflows derived from sk_drops: BTF: {exc}")
            else:
                plan.notes.append("no probe-able tcp_conn_request: SYN-path overflows derived from sk_drops")

    if plan.used:
        plan.defines.update(base)
        plan.defines["TQ_KPROBES"] = ""
    return plan
