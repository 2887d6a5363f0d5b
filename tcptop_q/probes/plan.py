"""The program plan: which hooks serve which metric on this kernel, and the program text.

Decided before anything is loaded, from the tracefs format files (BTF's
trace_event_raw_* when tracefs is unreadable), BTF struct offsets and kallsyms;
never from kernel version numbers. Pure apart from reading those files, so the
plan of another kernel can be built from its formats in a test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import kprobes as kprobe_fallbacks
from . import layout, tracefs
from .btf import Btf, BtfError

BPF_C = Path(__file__).with_name("tcpq.bpf.c")
ACCEPT_C = Path(__file__).with_name("accept.bpf.c")

# Map sizes: all hash maps are preallocated (older kernels refuse anything else in
# tracing programs), so these are kernel memory for as long as we run: ~25 MiB total.
MAX_LISTENERS = 16384  # listeners; also (netns, port) pairs with children
MAX_REASON_KEYS = 8192  # (listener, drop reason) pairs
MAX_SOCKETS = 65536  # LRU: sockets whose state-entry time / listener we remember
MAX_HIST_KEYS = 65536  # (listener, histogram, bucket) triples
# Per-CPU copies of the hot counters (tq_pcpu, tq_child_pcpu) cost value x possible CPUs each:
# each map gets this much, so a 64-CPU host keeps fewer listeners per-CPU (the rest count in
# the shared entries, atomically; both are summed, so the numbers are the same either way).
PCPU_BUDGET = 8 << 20
PCPU_LISTENER_BYTES = 192  # >= sizeof(struct tq_listener) in probes/tcpq.bpf.c
PCPU_CHILD_BYTES = 64  # sizeof(struct tq_child_states)

# Metric names as in BpfListenerCounts (plus "transitions" for the feed).
TRANSITIONS = "transitions"
QUEUED_METRICS = ("queued", "peak_accept_queue")
ACCEPT_METRICS = ("accepted", "accept_wait")
HANDSHAKE_METRIC = "handshake"
DROP_METRICS = ("listen_overflow_drops", "other_rx_drops", "drop_reasons")

# struct sock / struct net fields read by the program: macro -> (struct, member path).
SK_FIELDS = {
    "TQ_OFF_SK_STATE": ("sock", "__sk_common.skc_state"),
    "TQ_OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "TQ_OFF_SK_NUM": ("sock", "__sk_common.skc_num"),
    "TQ_OFF_SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "TQ_OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "TQ_OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "TQ_OFF_SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "TQ_OFF_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "TQ_OFF_SK_COOKIE": ("sock", "__sk_common.skc_cookie"),
    "TQ_OFF_SK_ACK_BACKLOG": ("sock", "sk_ack_backlog"),
    "TQ_OFF_SK_MAX_ACK_BACKLOG": ("sock", "sk_max_ack_backlog"),
}
NETNS_FIELDS = {
    "TQ_OFF_SK_NET": ("sock", "__sk_common.skc_net.net"),
    "TQ_OFF_NET_INUM": ("net", "ns.inum"),
}
# The child just queued is the tail of the listener's accept queue (probes/accept.bpf.c).
LINK_FIELDS = {
    "TQ_OFF_ICSK_ACCEPT_TAIL": ("inet_connection_sock", "icsk_accept_queue.rskq_accept_tail"),
    "TQ_OFF_REQ_SK": ("request_sock", "sk"),
}
# Raw tracepoints get TP_PROTO's arguments, not the trace-event record: what the record's
# TP_fast_assign read from the socket, the raw programs read at these offsets.
RAW_FIELDS = {
    "TQ_OFF_INET_SPORT": ("inet_sock", "inet_sport"),
    "TQ_OFF_INET_SADDR": ("inet_sock", "inet_saddr"),
    "TQ_OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
}
SNT_SYNACK = ("TQ_OFF_TREQ_SNT_SYNACK", ("tcp_request_sock", "snt_synack"))
# accept()'s returned fd -> struct sock: task->files->fdt->fd[fd]->private_data->sk.
FD_FIELDS = {
    "TQ_OFF_TASK_FILES": ("task_struct", "files"),
    "TQ_OFF_FILES_FDT": ("files_struct", "fdt"),
    "TQ_OFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "TQ_OFF_FDT_FD": ("fdtable", "fd"),
    "TQ_OFF_FILE_PRIVATE": ("file", "private_data"),
    "TQ_OFF_SOCKET_SK": ("socket", "sk"),
}

# Hooks: (category, event, function, fields the program reads).
TP_SET_STATE = ("sock", "inet_sock_set_state", "tq_set_state",
                ("skaddr", "oldstate", "newstate", "sport", "dport", "family",
                 "saddr", "daddr", "saddr_v6", "daddr_v6"))
TP_DATA_READY = ("sock", "sk_data_ready", "tq_data_ready", ("skaddr",))
TP_KFREE_SKB = ("skb", "kfree_skb", "tq_kfree_skb", ("rx_sk",))
TP_SYNACK = ("tcp", "tcp_retransmit_synack", "tq_synack", ("skaddr",))
TP_SEND_RESET = ("tcp", "tcp_send_reset", "tq_send_reset", ("skaddr",))
TP_RECV_RESET = ("tcp", "tcp_receive_reset", "tq_recv_reset", ("skaddr",))
TP_ACCEPT4 = ("syscalls", "sys_exit_accept4", "tq_accept_exit", ("ret",))
TP_ACCEPT = ("syscalls", "sys_exit_accept", "tq_accept_exit", ("ret",))
TRACEPOINTS = (TP_SET_STATE, TP_DATA_READY, TP_KFREE_SKB, TP_SYNACK, TP_SEND_RESET, TP_RECV_RESET,
               TP_ACCEPT4, TP_ACCEPT)
KRETPROBE_ACCEPT = ("inet_csk_accept", "tq_krp_csk_accept")


def _sock_first(proto: list[str], _fmt: tracefs.TpFormat) -> dict[str, int] | None:
    """(const struct sock *sk, ...): the socket is the first argument."""
    return {"SK": 0} if proto and proto[0] == "struct sock *" else None


def _set_state_args(proto: list[str], _fmt: tracefs.TpFormat) -> dict[str, int] | None:
    """(const struct sock *sk, const int oldstate, const int newstate): two ints cannot be told
    apart by type, so only this exact shape is taken (the classic record is used otherwise)."""
    return {"SK": 0, "OLD": 1, "NEW": 2} if proto == ["struct sock *", "int", "int"] else None


def _kfree_skb_args(proto: list[str], fmt: tracefs.TpFormat) -> dict[str, int] | None:
    """(skb, location[, enum skb_drop_reason reason][, struct sock *rx_sk]): reason came in
    5.17, rx_sk in 6.11; found by type, so either order would do."""
    if not proto or proto[0] != "struct sk_buff *" or proto.count("struct sock *") != 1:
        return None
    out = {"RX_SK": proto.index("struct sock *")}
    if "reason" in fmt.fields:
        if proto.count("enum skb_drop_reason") != 1:
            return None
        out["REASON"] = proto.index("enum skb_drop_reason")
    return out


# event -> (raw program, argument positions from the kernel's prototype, or None)
RAW_TRACEPOINTS = {
    "inet_sock_set_state": ("tq_r_set_state", _set_state_args),
    "sk_data_ready": ("tq_r_data_ready", _sock_first),
    "kfree_skb": ("tq_r_kfree_skb", _kfree_skb_args),
    "tcp_retransmit_synack": ("tq_r_synack", _sock_first),
    "tcp_send_reset": ("tq_r_send_reset", _sock_first),
    "tcp_receive_reset": ("tq_r_recv_reset", _sock_first),
}

KRETPROBE_BLOCKED_NOTE = ("accepted/accept_wait: an accept() already waiting in inet_csk_accept when the "
                          "probes attached is not seen (a kretprobe catches calls that begin after it): "
                          "at most one per thread blocked in accept() at that moment")

IO_URING_NOTE = ("accepted/accept_wait count accept() and accept4() syscalls only: "
                 "io_uring accepts (IORING_OP_ACCEPT) do not pass through them and are not seen")


class ProbeError(Exception):
    """A reason the probes cannot run, already phrased for the status line."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg[:200]


@dataclass
class Plan:
    """What will be compiled and attached, decided from tracefs/BTF before loading."""

    body: str  # generated structs + the .bpf.c files
    defines: dict[str, str]  # passed as -D flags
    attach: list[tuple[str, str, str]]  # (kind, target, function): ("tracepoint", "sock:sk_data_ready", "tq_data_ready")
    hooks: dict[str, str]
    notes: list[str]
    reasons: dict[int, str]
    ringbuf: bool
    feed_pages: int
    layout_source: str  # "tracefs" or "btf"
    # raw tracepoint program -> the classic (kind, target, function) attached instead if the
    # kernel refuses it (probes/loader.py attach_all)
    fallbacks: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    @property
    def cflags(self) -> list[str]:
        return [f"-D{k}={v}" if v != "" else f"-D{k}" for k, v in self.defines.items()]

    def text(self) -> str:
        head = ["// ---- generated by tcpq-top at start-up; passed to clang as -D flags:"]
        head += [f"#define {k} {v}".rstrip() for k, v in self.defines.items()]
        if self.attach:
            head.append("// ---- attached: " + ", ".join(f"{fn} -> {kind}:{tgt}" for kind, tgt, fn in self.attach))
        if self.fallbacks:
            head.append("// ---- if refused: " + ", ".join(f"{fn} -> {kind}:{tgt}" for kind, tgt, fn in self.fallbacks.values()))
        for note in self.notes:
            head.append(f"// ---- note: {note}")
        return "\n".join(head) + "\n\n" + self.body


def serves(hook: str, kind: str, target: str) -> bool:
    """Whether a hook string ("kprobe:a+b", "tracepoint:x:y+tracepoint:x:z") includes kind:target."""
    prefix = kind
    for part in hook.split("+"):
        if ":" in part:
            prefix, _sep, name = part.partition(":")
        else:
            name = part
        if prefix == kind and name == target:
            return True
    return False


_C_INT = {(1, False): "u8", (2, False): "u16", (4, False): "u32", (8, False): "u64",
          (1, True): "s8", (2, True): "s16", (4, True): "s32", (8, True): "s64"}


def c_struct(name: str, fmt: tracefs.TpFormat, wanted: tuple[str, ...] | None = None) -> str:
    """A C struct with the tracepoint's fields at the format file's offsets (padding in between)."""
    lines = [f"struct {name} {{"]
    asserts = []
    pos = 0
    pad = 0
    for f in sorted(fmt.fields.values(), key=lambda f: f.offset):
        if f.name.startswith("common_") or f.offset < pos or not f.size:
            continue
        if "__data_loc" in f.ctype:
            continue
        if f.offset > pos:
            lines.append(f"    u8 __pad{pad}[{f.offset - pos}];")
            pad += 1
        natural = f.size in (1, 2, 4, 8) and f.offset % f.size == 0 and not f.array_len
        if natural:
            lines.append(f"    {_C_INT[(f.size, f.signed and '*' not in f.ctype)]} {f.name};")
        else:
            lines.append(f"    u8 {f.name}[{f.size}];")
        if wanted is None or f.name in wanted:
            asserts.append(f'_Static_assert(__builtin_offsetof(struct {name}, {f.name}) == {f.offset}, "{f.name}");')
        pos = f.offset + f.size
    lines.append("};")
    return "\n".join(lines + asserts) + "\n"


def pages_for(capacity: int) -> int:
    need = max(1, capacity) * (layout.EVENT_SIZE + 8)  # ring buffer record header: 8 bytes
    pages = 1
    while pages * 4096 < need:
        pages *= 2
    return max(pages, 8)


def _syscall_exit_from_btf(btf: Btf, event: str) -> tracefs.TpFormat | None:
    """sys_exit_* share struct syscall_trace_exit {ent; int nr; long ret;}."""
    try:
        members = btf.layout("syscall_trace_exit")
    except BtfError:
        return None
    fields = {}
    for name, offset, size, arr, _ptr, signed in members:
        if name == "ent":
            continue
        name = "__syscall_nr" if name == "nr" else name
        fields[name] = tracefs.TpField(name, "long" if signed else "unsigned", offset, size, signed, arr)
    return tracefs.TpFormat("syscalls", event, fields, "", source="btf")


def read_formats(btf: Btf) -> tuple[dict[str, tracefs.TpFormat | None], str]:
    """Format of each hook's tracepoint; from tracefs, else (unreadable: not root) from BTF."""
    out: dict[str, tracefs.TpFormat | None] = {}
    try:
        root = tracefs.tracefs_root()
        for cat, ev, _fn, _f in TRACEPOINTS:
            out[ev] = tracefs.read_format(cat, ev, root)
        return out, "tracefs"
    except tracefs.TracefsError:
        enums = {"reason": ("skb_drop_reason", "SKB_DROP_REASON_")}
        for cat, ev, _fn, _f in TRACEPOINTS:
            if cat == "syscalls":
                out[ev] = _syscall_exit_from_btf(btf, ev)
            else:
                out[ev] = tracefs.format_from_btf(btf, cat, ev, enums if ev == "kfree_skb" else None)
        return out, "btf"


def possible_cpus(path: Path = Path("/sys/devices/system/cpu/possible")) -> int:
    """How many CPUs a per-CPU map allocates for ("0-3,8-11" -> 8)."""
    try:
        n = 0
        for part in path.read_text().strip().split(","):
            lo, _sep, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
        return max(1, n)
    except (OSError, ValueError):
        return max(1, os.cpu_count() or 1)


def _own_netns() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def _offsets(btf: Btf, fields: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {macro: str(btf.field(sname, path).offset) for macro, (sname, path) in fields.items()}


@dataclass
class _Builder:
    """The plan being built: each _plan_* step adds to it."""

    formats: dict[str, tracefs.TpFormat | None]
    defines: dict[str, str]
    notes: list[str]
    structs: list[str] = field(default_factory=list)
    attach: list[tuple[str, str, str]] = field(default_factory=list)
    hooks: dict[str, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    btf: Btf | None = None
    raw: bool = True  # raw tracepoints where the kernel has them ("--tracepoints classic": never)
    fallbacks: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # raw program -> classic attach

    def usable(self, tp: tuple, struct_name: str | None = None) -> tracefs.TpFormat | None:
        cat, ev, fn, needed = tp
        fmt = self.formats.get(ev)
        if fmt is None:
            return None
        missing = [n for n in needed if n not in fmt.fields]
        if missing:
            self.notes.append(f"{cat}:{ev} has no {', '.join(missing)} field on this kernel")
            return None
        if struct_name is None:
            self.structs.append(c_struct(f"tq_tp_{ev}", fmt, needed + ("protocol", "reason", "sport", "saddr")))
        self.attach.append(("tracepoint", f"{cat}:{ev}", fn))
        self._try_raw(cat, ev, fn, fmt)
        return fmt

    def _try_raw(self, cat: str, ev: str, fn: str, fmt: tracefs.TpFormat) -> None:
        """Attach the raw tracepoint program instead where the kernel's prototype of the event
        (BTF btf_trace_<event>) has the arguments it needs; the classic one stays compiled
        as the fallback the loader attaches if the kernel refuses the raw one."""
        spec = RAW_TRACEPOINTS.get(ev)
        if not self.raw or spec is None or self.btf is None:
            return
        raw_fn, match = spec
        try:
            proto = self.btf.trace_proto(ev)
            offsets = _offsets(self.btf, RAW_FIELDS)
        except BtfError as exc:
            self.notes.append(f"{cat}:{ev}: classic tracepoint ({exc})")
            return
        args = match(proto, fmt)
        if args is None:
            self.notes.append(f"{cat}:{ev}: classic tracepoint (raw arguments ({', '.join(proto)}) not the known shape)")
            return
        self.defines.update(offsets)
        self.defines["TQ_SZ_SK_PROTOCOL"] = str(self.btf.field(*RAW_FIELDS["TQ_OFF_SK_PROTOCOL"]).size)
        macro = "TQ_RTP_" + raw_fn.removeprefix("tq_r_").upper()
        self.defines[macro] = ""
        for name, index in args.items():
            self.defines[f"{macro}_{name}"] = str(index)
        classic = self.attach.pop()
        self.attach.append(("raw_tracepoint", f"{cat}:{ev}", raw_fn))
        self.fallbacks[raw_fn] = classic


def _base_defines(btf: Btf, port: int | None, netns: int | None, ringbuf: bool, pages: int,
                  notes: list[str]) -> dict[str, str]:
    cpus = possible_cpus()
    defines: dict[str, str] = {
        "TQ_MAX_LISTENERS": str(MAX_LISTENERS),
        "TQ_MAX_PCPU": str(max(64, min(MAX_LISTENERS, PCPU_BUDGET // (cpus * PCPU_LISTENER_BYTES)))),
        "TQ_MAX_PCPU_CHILD": str(max(64, min(MAX_LISTENERS, PCPU_BUDGET // (cpus * PCPU_CHILD_BYTES)))),
        "TQ_MAX_REASON_KEYS": str(MAX_REASON_KEYS),
        "TQ_MAX_SOCKETS": str(MAX_SOCKETS),
        "TQ_MAX_HIST_KEYS": str(MAX_HIST_KEYS),
    }
    try:
        defines.update(_offsets(btf, SK_FIELDS))
    except BtfError as exc:
        raise ProbeError(f"BTF: {exc}") from None
    try:
        defines.update(_offsets(btf, NETNS_FIELDS))
        defines["TQ_HAVE_NETNS"] = "1"
    except BtfError:
        # CONFIG_NET_NS=n: everything is in the initial namespace.
        defines["TQ_HAVE_NETNS"] = "0"
        defines["TQ_INIT_NETNS"] = str(_own_netns())
        notes.append("kernel without network namespaces: netns is the initial one")
    defines["TQ_RINGBUF"] = "1" if ringbuf else "0"
    defines["TQ_FEED_PAGES"] = str(pages)
    if not ringbuf:
        notes.append("no BPF ring buffer on this kernel: feed uses a perf buffer")
    try:  # the listener's socket inode (a join key before the kernel has its cookie)
        ino = btf.field("socket_alloc", "vfs_inode.i_ino")
        sock = btf.field("socket_alloc", "socket")
        defines["TQ_OFF_SK_SOCKET"] = str(btf.field("sock", "sk_socket").offset)
        defines["TQ_OFF_SOCKET_INO"] = str(ino.offset - sock.offset)
        defines["TQ_SZ_SOCKET_INO"] = str(min(ino.size, 8))
    except BtfError:
        pass  # listeners the kernel has no cookie for yet are joined by address (sampler.join_bpf)
    if port is not None:
        defines["TQ_FILTER_PORT"] = str(int(port))
    if netns is not None:
        defines["TQ_FILTER_NETNS"] = str(int(netns))
    return defines


def _plan_state_and_queue(p: _Builder) -> None:
    fmt = p.usable(TP_SET_STATE)
    if fmt:
        p.defines["TQ_HAVE_SET_STATE"] = ""
        if "protocol" in fmt.fields:
            p.defines["TQ_TP_SET_STATE_HAS_PROTOCOL"] = ""
        p.hooks[TRANSITIONS] = fmt.hook
    else:
        p.notes.append("no sock:inet_sock_set_state tracepoint: no transitions, timelines or ages")
    fmt = p.usable(TP_DATA_READY)
    if fmt:
        p.defines["TQ_HAVE_SK_DATA_READY"] = ""
        if "protocol" in fmt.fields:
            p.defines["TQ_TP_DATA_READY_HAS_PROTOCOL"] = ""
        for m in QUEUED_METRICS:
            p.hooks[m] = fmt.hook
    else:
        p.notes.append("no sock:sk_data_ready tracepoint on this kernel")


def _plan_drops(p: _Builder) -> None:
    fmt = p.usable(TP_KFREE_SKB)
    if not fmt:
        p.notes.append("skb:kfree_skb without rx_sk: drops cannot be charged to a listener")
        return
    p.defines["TQ_HAVE_KFREE_SKB"] = ""
    p.hooks["other_rx_drops"] = fmt.hook
    if "reason" not in fmt.fields:
        p.notes.append("kfree_skb has no drop reason: listen overflows not told apart")
        return
    p.defines["TQ_HAVE_DROP_REASON"] = ""
    p.reasons = fmt.symbols("reason")
    p.hooks["drop_reasons"] = fmt.hook
    overflow = [num for num, name in p.reasons.items() if name == "TCP_LISTEN_OVERFLOW"]
    if overflow:
        p.defines["TQ_REASON_LISTEN_OVERFLOW"] = str(overflow[0])
        p.hooks["listen_overflow_drops"] = fmt.hook
    else:
        p.notes.append("kfree_skb has no TCP_LISTEN_OVERFLOW reason: third-ACK overflows count as other_rx_drops")


def _plan_tcp_events(p: _Builder) -> None:
    for tp, metric in ((TP_SYNACK, "synack_retrans"), (TP_SEND_RESET, "resets_sent"), (TP_RECV_RESET, "resets_received")):
        fmt = p.usable(tp)
        if fmt:
            p.defines[{"tq_synack": "TQ_HAVE_RETRANSMIT_SYNACK", "tq_send_reset": "TQ_HAVE_SEND_RESET",
                       "tq_recv_reset": "TQ_HAVE_RECEIVE_RESET"}[tp[2]]] = ""
            p.hooks[metric] = fmt.hook
            prefix = {"tq_send_reset": "TQ_SEND_RESET", "tq_recv_reset": "TQ_RECEIVE_RESET"}.get(tp[2])
            if prefix and "sport" in fmt.fields and fmt.fields["sport"].size == 2:
                p.defines[f"{prefix}_HAS_SPORT"] = ""
            elif prefix and "saddr" in fmt.fields and fmt.fields["saddr"].size >= 16:
                p.defines[f"{prefix}_SOCKADDR"] = ""
        elif p.formats.get(tp[1]) is None:
            p.notes.append(f"no {tp[0]}:{tp[1]} tracepoint: {metric} unknown")


def _plan_accept(p: _Builder, btf: Btf, kprobes: bool, functions: frozenset[str] | None,
                 blacklist: frozenset[str], choice: str | None = None) -> None:
    """The child -> listener link at enqueue, and the accept() side: a kretprobe on
    inet_csk_accept where kprobes exist (its return value only: its arguments changed in
    6.10; it also sees io_uring accepts), else the accept/accept4 syscall exits.
    `choice` ("kretprobe" | "syscall") forces one path (tests compare the two); "off" none."""
    if choice == "off":
        p.notes.append("accept tracking off (--accept-hook off): accepted/accept_wait/handshake unknown")
        return
    if "queued" not in p.hooks:
        p.notes.append("no enqueue hook: accepted/accept_wait/handshake unknown")
        return
    try:
        p.defines.update(_offsets(btf, LINK_FIELDS))
    except BtfError as exc:
        p.notes.append(f"accepted/accept_wait unknown: BTF: {exc}")
        return
    p.defines["TQ_HAVE_LINK"] = ""
    try:
        p.defines[SNT_SYNACK[0]] = str(btf.field(*SNT_SYNACK[1]).offset)
        p.hooks[HANDSHAKE_METRIC] = p.hooks["queued"]
    except BtfError as exc:
        p.notes.append(f"handshake unknown: BTF: {exc}")
    fn, prog = KRETPROBE_ACCEPT
    can_kretprobe = kprobes and functions is not None and fn in functions and fn not in blacklist
    if choice == "kretprobe" and not can_kretprobe:
        p.notes.append(f"no probe-able {fn} (kprobes {'on' if kprobes else 'off'}): accepted/accept_wait unknown")
        return
    if can_kretprobe and choice != "syscall":
        p.defines["TQ_KRP_CSK_ACCEPT"] = ""
        p.attach.append(("kretprobe", fn, prog))
        for m in ACCEPT_METRICS:
            p.hooks[m] = f"kretprobe:{fn}"
        p.notes.append(KRETPROBE_BLOCKED_NOTE)
        return
    try:
        p.defines.update(_offsets(btf, FD_FIELDS))
    except BtfError as exc:
        p.notes.append(f"accepted/accept_wait unknown: BTF: {exc}")
        return
    fmt4 = p.formats.get(TP_ACCEPT4[1])
    fmt = p.formats.get(TP_ACCEPT[1])
    if fmt4 is None or "ret" not in fmt4.fields:
        p.notes.append("no syscalls:sys_exit_accept4 tracepoint and no kprobes: accepted/accept_wait unknown")
        return
    p.structs.append(c_struct("tq_tp_sys_exit_accept", fmt4, ("ret",)))
    p.usable(TP_ACCEPT4, struct_name="tq_tp_sys_exit_accept")
    hook = fmt4.hook
    if fmt is not None and "ret" in fmt.fields and fmt.fields["ret"] == fmt4.fields["ret"]:
        p.usable(TP_ACCEPT, struct_name="tq_tp_sys_exit_accept")
        hook += "+" + fmt.hook
    p.defines["TQ_HAVE_ACCEPT_SYSCALL"] = ""
    for m in ACCEPT_METRICS:
        p.hooks[m] = hook
    p.notes.append(IO_URING_NOTE)


def build_plan(
    port: int | None = None,
    netns: int | None = None,
    feed_capacity: int = 4096,
    btf: Btf | None = None,
    formats: dict[str, tracefs.TpFormat | None] | None = None,
    kprobes: bool | None = None,
    ringbuf: bool | None = None,
    kallsyms: frozenset[str] | None = None,
    blacklist: frozenset[str] | None = None,
    accept_hook: str | None = None,
    tracepoints: str | None = None,
) -> Plan:
    """Decide hooks and generate the program. Raises ProbeError (one line) when impossible.
    `tracepoints`: "classic" uses trace-event tracepoints only; None/"auto" raw tracepoints
    wherever the kernel's BTF prototype of the event has what the program reads."""
    try:
        btf = btf or Btf.vmlinux()
    except BtfError as exc:
        raise ProbeError(str(exc)) from None
    notes: list[str] = []
    if ringbuf is None:
        ringbuf = btf.has_struct("bpf_ringbuf")
    pages = pages_for(feed_capacity)
    defines = _base_defines(btf, port, netns, ringbuf, pages, notes)
    layout_source = "tracefs"
    if formats is None:
        formats, layout_source = read_formats(btf)
    if kprobes is None:
        try:
            kprobes = tracefs.kprobes_available()
        except (tracefs.TracefsError, OSError):
            kprobes = False
    blacklist = kprobe_fallbacks.kprobe_blacklist() if blacklist is None else blacklist

    if tracepoints not in (None, "auto", "classic"):
        raise ProbeError(f"unknown tracepoint kind {tracepoints!r} (auto or classic)")
    p = _Builder(formats, defines, notes, btf=btf, raw=tracepoints != "classic")
    _plan_state_and_queue(p)
    _plan_drops(p)
    _plan_tcp_events(p)
    # Kprobes only for what the tracepoints leave unserved (probes/kprobes.py decides which).
    fallback = kprobe_fallbacks.plan_fallbacks(p.hooks, btf, bool(kprobes), functions=kallsyms, blacklist=blacklist)
    if fallback.used:
        p.defines.update(fallback.defines)
        p.attach.extend(fallback.attach)
        p.hooks.update(fallback.hooks)
    p.notes.extend(fallback.notes)
    functions = kallsyms
    if kprobes and functions is None:
        try:
            functions = kprobe_fallbacks.kernel_functions(wanted=(KRETPROBE_ACCEPT[0],))
        except OSError:
            functions = frozenset()
    _plan_accept(p, btf, bool(kprobes), functions, blacklist, accept_hook)

    if layout_source == "btf":
        p.notes.append("tracepoint layouts from BTF trace_event_raw_* (tracefs unreadable)")
    if p.fallbacks:
        p.hooks = raw_hooks(p.hooks, [t for k, t, _f in p.attach if k == "raw_tracepoint"])
    elif tracepoints == "classic":
        p.notes.append("classic tracepoints only (--tracepoints classic)")
    body = layout.c_header()
    body += "// ---- tracepoint argument layouts (from the format files)\n" + "\n".join(p.structs)
    body += "\n" + BPF_C.read_text() + "\n" + ACCEPT_C.read_text()
    if fallback.used:
        body += "\n" + fallback.body()
    return Plan(body, p.defines, p.attach, p.hooks, p.notes, p.reasons, ringbuf, pages, layout_source, p.fallbacks)


def raw_hooks(hooks: dict[str, str], targets: list[str], kind: str = "raw_tracepoint") -> dict[str, str]:
    """hooks with "tracepoint:<target>" parts renamed to "<kind>:<target>" (and back with
    kind="tracepoint" from a raw one)."""
    other = "tracepoint" if kind == "raw_tracepoint" else "raw_tracepoint"
    wanted = {f"{other}:{t}" for t in targets}
    out = {}
    for metric, hook in hooks.items():
        out[metric] = "+".join(f"{kind}:{part.partition(':')[2]}" if part in wanted else part
                               for part in hook.split("+"))
    return out
