"""The eBPF probes: per-listener counters in kernel maps and a bounded transition feed.

What each hook serves (chosen at start from the tracefs format files; see DESIGN.md):

    sock:inet_sock_set_state   transitions (feed, timelines, connection ages)
    sock:sk_data_ready         accepts, peak_accept_queue (filtered to LISTEN in BPF)
                               fallback: kprobe:sock_def_readable where kprobes exist
    skb:kfree_skb (rx_sk)      listen_overflow_drops (reason TCP_LISTEN_OVERFLOW),
                               other_rx_drops, drop_reasons; fallback for the overflows
                               only: kprobes on tcp_v{4,6}_syn_recv_sock (+ syn_overflows
                               from tcp_conn_request); see probes/kprobes.py
    tcp:tcp_retransmit_synack  synack_retrans
    tcp:tcp_send_reset         resets_sent      (a child's resets go to its port's listener)
    tcp:tcp_receive_reset      resets_received

A metric whose hook is missing is absent from `hooks` (the sampler reports null)
and the reason is in `notes`.

Beyond counters: the feed (ring buffer, perf buffer before 5.8) carries every
transition unless limited with set_feed("off" | "port", port); timelines and
state_since() are built from the feed, so they cover what the feed carried.
child_deltas() gives per (netns, port) children entered-minus-left per state, in
kernel, whatever the feed does (DESIGN.md: reconciled with sock_diag dumps). Kernel structs are read at offsets from BTF, passed
as -D flags; tracepoint arguments through structs generated from the format files.
Nothing here imports textual, and no method raises to the caller: failures end in
state "off" with a one-line `error`.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import ipaddress
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..model import BpfListenerCounts, BpfReading, ListenerKey, Transition, state_name
from . import kprobes as kprobe_fallbacks
from . import tracefs
from .btf import Btf, BtfError

BPF_C = Path(__file__).with_name("tcpq.bpf.c")

# Map sizes: all hash maps are preallocated (older kernels refuse anything else in
# tracing programs), so these are kernel memory for as long as we run: ~20 MiB total.
MAX_LISTENERS = 16384  # listeners; also (netns, port) pairs with children
MAX_REASON_KEYS = 8192  # (listener, drop reason) pairs
MAX_SOCKETS = 65536  # LRU: sockets whose state-entry time / listener we remember
TIMELINE_SOCKETS = 20000
TIMELINE_ENTRIES = 16

# Metric names as in BpfListenerCounts (plus "transitions" for the feed).
TRANSITIONS = "transitions"
ACCEPT_METRICS = ("accepts", "peak_accept_queue")
DROP_METRICS = ("listen_overflow_drops", "other_rx_drops", "drop_reasons")

# struct sock / struct net fields read by the program: macro -> (struct, member path).
SK_FIELDS = {
    "TQ_OFF_SK_STATE": ("sock", "__sk_common.skc_state"),
    "TQ_OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "TQ_OFF_SK_NUM": ("sock", "__sk_common.skc_num"),
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

# Hooks: (category, event, function, fields the program reads).
TP_SET_STATE = ("sock", "inet_sock_set_state", "tq_set_state",
                ("skaddr", "oldstate", "newstate", "sport", "dport", "family",
                 "saddr", "daddr", "saddr_v6", "daddr_v6"))
TP_DATA_READY = ("sock", "sk_data_ready", "tq_data_ready", ("skaddr",))
TP_KFREE_SKB = ("skb", "kfree_skb", "tq_kfree_skb", ("rx_sk",))
TP_SYNACK = ("tcp", "tcp_retransmit_synack", "tq_synack", ("skaddr",))
TP_SEND_RESET = ("tcp", "tcp_send_reset", "tq_send_reset", ("skaddr",))
TP_RECV_RESET = ("tcp", "tcp_receive_reset", "tq_recv_reset", ("skaddr",))

# struct tq_event in tcpq.bpf.c
_EVENT = struct.Struct("<QQQIIHHHBB16s16s16s")
_NO_TIME = (1 << 64) - 1


class ProbeError(Exception):
    """A reason the probes cannot run, already phrased for the status line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg[:200]


# ------------------------------------------------------------------ program plan


@dataclass
class Plan:
    """What will be compiled and attached, decided from tracefs/BTF before loading."""

    body: str  # generated structs + the .bpf.c file
    defines: dict[str, str]  # passed as -D flags
    attach: list[tuple[str, str, str]]  # (kind, target, function): ("tracepoint", "sock:sk_data_ready", "tq_data_ready")
    hooks: dict[str, str]
    notes: list[str]
    reasons: dict[int, str]
    ringbuf: bool
    feed_pages: int
    layout_source: str  # "tracefs" or "btf"

    @property
    def cflags(self) -> list[str]:
        return [f"-D{k}={v}" if v != "" else f"-D{k}" for k, v in self.defines.items()]

    def text(self) -> str:
        head = ["// ---- generated by tcpq-top at start-up; passed to clang as -D flags:"]
        head += [f"#define {k} {v}".rstrip() for k, v in self.defines.items()]
        if self.attach:
            head.append("// ---- attached: " + ", ".join(f"{fn} -> {kind}:{tgt}" for kind, tgt, fn in self.attach))
        for note in self.notes:
            head.append(f"// ---- note: {note}")
        return "\n".join(head) + "\n\n" + self.body


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


def _pages_for(capacity: int) -> int:
    need = max(1, capacity) * (_EVENT.size + 8)  # ring buffer record header: 8 bytes
    pages = 1
    while pages * 4096 < need:
        pages *= 2
    return max(pages, 8)


def _read_formats(btf: Btf) -> tuple[dict[str, tracefs.TpFormat | None], str]:
    """Format of each hook's tracepoint; from tracefs, else (unreadable: not root) from BTF."""
    events = [TP_SET_STATE, TP_DATA_READY, TP_KFREE_SKB, TP_SYNACK, TP_SEND_RESET, TP_RECV_RESET]
    out: dict[str, tracefs.TpFormat | None] = {}
    try:
        root = tracefs.tracefs_root()
        for cat, ev, _fn, _f in events:
            out[ev] = tracefs.read_format(cat, ev, root)
        return out, "tracefs"
    except tracefs.TracefsError:
        enums = {"reason": ("skb_drop_reason", "SKB_DROP_REASON_")}
        for cat, ev, _fn, _f in events:
            out[ev] = tracefs.format_from_btf(btf, cat, ev, enums if ev == "kfree_skb" else None)
        return out, "btf"


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
) -> Plan:
    """Decide hooks and generate the program. Raises ProbeError (one line) when impossible."""
    try:
        btf = btf or Btf.vmlinux()
    except BtfError as exc:
        raise ProbeError(str(exc)) from None
    defines: dict[str, str] = {
        "TQ_MAX_LISTENERS": str(MAX_LISTENERS),
        "TQ_MAX_REASON_KEYS": str(MAX_REASON_KEYS),
        "TQ_MAX_SOCKETS": str(MAX_SOCKETS),
    }
    try:
        for macro, (sname, path) in SK_FIELDS.items():
            defines[macro] = str(btf.field(sname, path).offset)
    except BtfError as exc:
        raise ProbeError(f"BTF: {exc}") from None
    notes: list[str] = []
    try:
        for macro, (sname, path) in NETNS_FIELDS.items():
            defines[macro] = str(btf.field(sname, path).offset)
        defines["TQ_HAVE_NETNS"] = "1"
    except BtfError:
        # CONFIG_NET_NS=n: everything is in the initial namespace.
        defines["TQ_HAVE_NETNS"] = "0"
        defines["TQ_INIT_NETNS"] = str(_own_netns())
        notes.append("kernel without network namespaces: netns is the initial one")
    if ringbuf is None:
        ringbuf = btf.has_struct("bpf_ringbuf")
    pages = _pages_for(feed_capacity)
    defines["TQ_RINGBUF"] = "1" if ringbuf else "0"
    defines["TQ_FEED_PAGES"] = str(pages)
    if not ringbuf:
        notes.append("no BPF ring buffer on this kernel: feed uses a perf buffer")
    if port is not None:
        defines["TQ_FILTER_PORT"] = str(int(port))
    if netns is not None:
        defines["TQ_FILTER_NETNS"] = str(int(netns))

    layout_source = "tracefs"
    if formats is None:
        formats, layout_source = _read_formats(btf)
    if kprobes is None:
        try:
            kprobes = tracefs.kprobes_available()
        except (tracefs.TracefsError, OSError):
            kprobes = False

    structs: list[str] = []
    attach: list[tuple[str, str, str]] = []
    hooks: dict[str, str] = {}
    reasons: dict[int, str] = {}

    def usable(tp: tuple) -> tracefs.TpFormat | None:
        cat, ev, fn, needed = tp
        fmt = formats.get(ev)
        if fmt is None:
            return None
        missing = [n for n in needed if n not in fmt.fields]
        if missing:
            notes.append(f"{cat}:{ev} has no {', '.join(missing)} field on this kernel")
            return None
        structs.append(c_struct(f"tq_tp_{ev}", fmt, needed + ("protocol", "reason", "sport", "saddr")))
        attach.append(("tracepoint", f"{cat}:{ev}", fn))
        return fmt

    fmt = usable(TP_SET_STATE)
    if fmt:
        defines["TQ_HAVE_SET_STATE"] = ""
        if "protocol" in fmt.fields:
            defines["TQ_TP_SET_STATE_HAS_PROTOCOL"] = ""
        hooks[TRANSITIONS] = fmt.hook
    else:
        notes.append("no sock:inet_sock_set_state tracepoint: no transitions, timelines or ages")

    fmt = usable(TP_DATA_READY)
    if fmt:
        defines["TQ_HAVE_SK_DATA_READY"] = ""
        if "protocol" in fmt.fields:
            defines["TQ_TP_DATA_READY_HAS_PROTOCOL"] = ""
        for m in ACCEPT_METRICS:
            hooks[m] = fmt.hook
    else:
        notes.append("no sock:sk_data_ready tracepoint on this kernel")

    fmt = usable(TP_KFREE_SKB)
    if fmt:
        defines["TQ_HAVE_KFREE_SKB"] = ""
        hooks["other_rx_drops"] = fmt.hook
        if "reason" in fmt.fields:
            defines["TQ_HAVE_DROP_REASON"] = ""
            reasons = fmt.symbols("reason")
            hooks["drop_reasons"] = fmt.hook
            overflow = [num for num, name in reasons.items() if name == "TCP_LISTEN_OVERFLOW"]
            if overflow:
                defines["TQ_REASON_LISTEN_OVERFLOW"] = str(overflow[0])
                hooks["listen_overflow_drops"] = fmt.hook
            else:
                notes.append("kfree_skb has no TCP_LISTEN_OVERFLOW reason: third-ACK overflows count as other_rx_drops")
        else:
            notes.append("kfree_skb has no drop reason: listen overflows not told apart")
    else:
        notes.append("skb:kfree_skb without rx_sk: drops cannot be charged to a listener")

    for tp, metric in ((TP_SYNACK, "synack_retrans"), (TP_SEND_RESET, "resets_sent"), (TP_RECV_RESET, "resets_received")):
        fmt = usable(tp)
        if fmt:
            defines[{"tq_synack": "TQ_HAVE_RETRANSMIT_SYNACK", "tq_send_reset": "TQ_HAVE_SEND_RESET",
                     "tq_recv_reset": "TQ_HAVE_RECEIVE_RESET"}[tp[2]]] = ""
            hooks[metric] = fmt.hook
            prefix = {"tq_send_reset": "TQ_SEND_RESET", "tq_recv_reset": "TQ_RECEIVE_RESET"}.get(tp[2])
            if prefix and "sport" in fmt.fields and fmt.fields["sport"].size == 2:
                defines[f"{prefix}_HAS_SPORT"] = ""
            elif prefix and "saddr" in fmt.fields and fmt.fields["saddr"].size >= 16:
                defines[f"{prefix}_SOCKADDR"] = ""
        elif tp[1] not in formats or formats.get(tp[1]) is None:
            notes.append(f"no {tp[0]}:{tp[1]} tracepoint: {metric} unknown")

    # Kprobes only for what the tracepoints leave unserved (probes/kprobes.py decides which).
    fallback = kprobe_fallbacks.plan_fallbacks(
        hooks, btf, bool(kprobes), functions=kallsyms,
        blacklist=kprobe_fallbacks.kprobe_blacklist() if blacklist is None else blacklist,
    )
    if fallback.used:
        defines.update(fallback.defines)
        attach.extend(fallback.attach)
        hooks.update(fallback.hooks)
    notes.extend(fallback.notes)

    if layout_source == "btf":
        notes.append("tracepoint layouts from BTF trace_event_raw_* (tracefs unreadable)")
    body = "// ---- tracepoint argument layouts (from the format files)\n" + "\n".join(structs)
    body += "\n" + BPF_C.read_text()
    if fallback.used:
        body += "\n" + fallback.body()
    return Plan(body, defines, attach, hooks, notes, reasons, ringbuf, pages, layout_source)


def _own_netns() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


# ------------------------------------------------------------------ preflight


def _cap_eff() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def preflight() -> None:
    """Raise ProbeError with the first reason the probes cannot load."""
    caps = _cap_eff()
    cap_sys_admin, cap_perfmon, cap_bpf = 1 << 21, 1 << 38, 1 << 39
    if not (caps & cap_sys_admin or (caps & cap_bpf and caps & cap_perfmon)):
        raise ProbeError(f"needs root (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN); running as uid {os.geteuid()}")
    try:
        lockdown = Path("/sys/kernel/security/lockdown").read_text()
        if "[confidentiality]" in lockdown:
            raise ProbeError("kernel lockdown=confidentiality forbids reading kernel memory from BPF")
    except OSError:
        pass
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise ProbeError("no BTF at /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)")


def _release_compiler_heap() -> None:
    """clang/LLVM free tens of MB once the program is built, but glibc keeps the pages:
    hand them back to the kernel (RSS is what an SRE sees in top)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _import_bcc():
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError:
        raise ProbeError("bcc is not installed (apt install python3-bpfcc; use a venv with --system-site-packages)") from None
    return bcc


# ------------------------------------------------------------------ timelines


class _Timeline:
    __slots__ = ("netns", "skaddr", "tuple", "entries")

    def __init__(self, netns: int, skaddr: int) -> None:
        self.netns = netns
        self.skaddr = skaddr
        self.tuple: tuple | None = None
        self.entries: collections.deque[Transition] = collections.deque(maxlen=TIMELINE_ENTRIES)


def _tuple_of(tr: Transition) -> tuple | None:
    if not tr.rport or not tr.lport or tr.raddr in ("0.0.0.0", "::"):
        return None
    return (tr.netns, tr.family, tr.laddr, tr.lport, tr.raddr, tr.rport)


class Timelines:
    """Per-socket transition history, LRU-bounded, kept after close until evicted."""

    def __init__(self, max_sockets: int = TIMELINE_SOCKETS) -> None:
        self.max_sockets = max_sockets
        self._current: dict[tuple[int, int], _Timeline] = {}
        self._by_tuple: dict[tuple, _Timeline] = {}
        self._lru: collections.OrderedDict[int, _Timeline] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, tr: Transition) -> None:
        with self._lock:
            key = (tr.netns, tr.skaddr)
            tl = self._current.get(key)
            fresh = tl is None or (tl.entries and tl.entries[-1].new == "CLOSE") or tr.old in ("CLOSE",) or (
                tr.old == "LISTEN" and tr.new == "SYN_RECV"
            )
            if fresh:
                tl = _Timeline(tr.netns, tr.skaddr)
                self._current[key] = tl
            assert tl is not None
            tup = _tuple_of(tr)
            if tup is not None and tl.tuple is None:
                tl.tuple = tup
                self._by_tuple[tup] = tl
                # The child's LISTEN->SYN_RECV event carries the listener's addresses.
                tl.entries = collections.deque(
                    (replace(e, laddr=tr.laddr, lport=tr.lport, raddr=tr.raddr, rport=tr.rport, family=tr.family)
                     for e in tl.entries),
                    maxlen=TIMELINE_ENTRIES,
                )
                tr_add = tr
            elif tl.tuple is not None and tup is None:
                _n, fam, la, lp, ra, rp = tl.tuple
                tr_add = replace(tr, family=fam, laddr=la, lport=lp, raddr=ra, rport=rp)
            else:
                tr_add = tr
            tl.entries.append(tr_add)
            ident = id(tl)
            self._lru[ident] = tl
            self._lru.move_to_end(ident)
            while len(self._lru) > self.max_sockets:
                _i, old = self._lru.popitem(last=False)
                if self._current.get((old.netns, old.skaddr)) is old:
                    del self._current[(old.netns, old.skaddr)]
                if old.tuple is not None and self._by_tuple.get(old.tuple) is old:
                    del self._by_tuple[old.tuple]

    def by_tuple(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> list[Transition]:
        with self._lock:
            tl = self._by_tuple.get((netns, family, laddr, lport, raddr, rport))
            return list(tl.entries) if tl else []

    def by_skaddr(self, netns: int, skaddr: int) -> list[Transition]:
        with self._lock:
            tl = self._current.get((netns, skaddr))
            return list(tl.entries) if tl else []

    def __len__(self) -> int:
        return len(self._lru)


# ------------------------------------------------------------------ the probes


class BpfProbes:
    """Loads in a background thread; read() once per tick from the collector thread."""

    def __init__(
        self, port: int | None = None, netns: int | None = None, feed_capacity: int = 4096, ringbuf: bool | None = None
    ) -> None:
        self.port = port
        self.ringbuf = ringbuf  # None: BPF ring buffer where the kernel has one, else perf buffer
        self.netns = netns
        self.feed_capacity = max(16, int(feed_capacity))
        self.state = "off"
        self.error: str | None = "not started"
        self.hooks: dict[str, str] = {}
        self.notes: list[str] = []
        self.live_since = 0.0
        self.load_seconds: float | None = None
        self.timings: dict[str, float] = {}  # load phases, seconds: plan, compile, attach
        self._plan: Plan | None = None
        self._bpf = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._closed = False
        self._lock = threading.RLock()  # guards _bpf and map access; re-entrant for signal handlers
        self._pending: collections.deque[bytes] = collections.deque()
        self._user_lost = 0
        self._epoch = 0
        self._reasons: dict[int, str] = {}
        self._mono_to_unix = 0.0
        self.timelines = Timelines()
        self._atexit_registered = False
        self._cb: Callable | None = None
        self._child_deltas: dict[tuple[int, int], dict[str, int]] = {}
        self._reader: int | None = None  # thread inside read(), if any
        self._uncounted = 0

    # ---- lifecycle

    def start(self) -> None:
        if self._thread is not None or self._closed:
            return
        self.state = "loading"
        self.error = None
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True
        self._thread = threading.Thread(target=self._load, name="tcpq-bpf-load", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.state == "live"

    def _fail(self, reason: str) -> None:
        self.state = "off"
        self.error = reason
        self.hooks = {}
        self._ready.set()

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            bcc = _import_bcc()
            preflight()
            t_plan = time.monotonic()
            plan = build_plan(self.port, self.netns, self.feed_capacity, ringbuf=self.ringbuf)
            self._plan = plan
            self.timings["plan"] = time.monotonic() - t_plan
            if not plan.attach:
                raise ProbeError("no usable tracepoint on this kernel")
            from .kheaders import find_kernel_source

            try:
                ksrc, _desc = find_kernel_source()
            except OSError as exc:
                raise ProbeError(str(exc)) from None
            if ksrc:
                os.environ["BCC_KERNEL_SOURCE"] = ksrc
            t_compile = time.monotonic()
            try:
                b = bcc.BPF(text=plan.body, cflags=plan.cflags)
            except Exception as exc:  # bcc raises bare Exception for compile/load errors
                raise ProbeError(f"BPF compile failed: {_one_line(exc)}") from None
            _release_compiler_heap()
            # Held until the probes are attached and the feed is open: a close() meanwhile
            # waits rather than cleaning bcc up under the attach calls.
            self._lock.acquire()
            try:
                self._attach(b, plan, t0, t_compile)
            finally:
                self._lock.release()
        except ProbeError as exc:
            self._teardown()
            self._fail(str(exc))
        except Exception as exc:  # never a traceback to the UI
            self._teardown()
            self._fail(f"BPF: {_one_line(exc)}")

    def _attach(self, b, plan, t0: float, t_compile: float) -> None:
        """Attach every planned hook and open the feed; called with self._lock held."""
        if self._closed:
            b.cleanup()
            return
        self._bpf = b
        t_attach = time.monotonic()
        self.timings["compile"] = t_attach - t_compile
        hooks = dict(plan.hooks)
        attached = 0
        for kind, target, fn in plan.attach:
            try:
                if kind == "tracepoint":
                    b.attach_tracepoint(tp=target.encode(), fn_name=fn.encode())
                else:
                    b.attach_kprobe(event=target.encode(), fn_name=fn.encode())
                attached += 1
            except Exception as exc:
                hook = f"{kind}:{target}"
                for metric in [m for m, h in hooks.items() if h == hook]:
                    del hooks[metric]
                self.notes.append(f"attach {hook} failed: {_one_line(exc)}")
        if not attached:
            raise ProbeError(self.notes[-1] if self.notes else "nothing attached")
        self._reasons = dict(plan.reasons)
        self._set_ctl(0, 1)  # feed: every transition
        self._mono_to_unix = time.time() - time.monotonic()
        if TRANSITIONS in hooks:
            if plan.ringbuf:
                self._cb = self._on_ring_event
                b[b"tq_feed"].open_ring_buffer(self._cb)
            else:
                self._cb = self._on_perf_event
                b[b"tq_feed"].open_perf_buffer(self._cb, page_cnt=plan.feed_pages, lost_cb=self._on_perf_lost)
        if self._closed:
            self._teardown()
            return
        self.hooks = hooks
        self.notes = plan.notes + self.notes
        self.live_since = time.time()
        self.load_seconds = time.monotonic() - t0
        self.timings["attach"] = time.monotonic() - t_attach
        self.state = "live"
        self.error = None
        self._ready.set()

    def close(self) -> None:
        """Detach everything. Idempotent; safe from atexit and signal handlers."""
        self._closed = True
        if self._reader == threading.get_ident():
            # A signal handler interrupted read() on this thread: tearing bcc down under it
            # could crash; read() finishes the job on its way out (also when the handler exits).
            self.state = "off"
            self.error = "closed"
            return
        got = self._lock.acquire(timeout=5.0)
        if got:
            try:
                self._teardown()
            finally:
                self._lock.release()
        # else: the loader or a read() holds bcc right now; tearing it down under them could
        # crash bcc. Both check _closed when they let go and tear down themselves.
        if self.state != "off":
            self.state = "off"
            self.error = "closed"
        self._ready.set()

    def _teardown(self) -> None:
        b, self._bpf = self._bpf, None
        if b is not None:
            try:
                b.cleanup()
            except Exception:
                pass

    # ---- control

    def _set_ctl(self, slot: int, value: int) -> None:
        b = self._bpf
        if b is None:
            return
        tbl = b[b"tq_ctl"]
        tbl[ctypes.c_int(slot)] = ctypes.c_ulonglong(value)

    def drop_metrics(self, metrics: set[str]) -> None:
        """Detach the hooks that serve only `metrics` (a view that never shows them): at
        storm rates every program run costs. Those metrics disappear from `hooks`, so they
        read as unknown (null), never as zero."""
        with self._lock:
            b = self._bpf
            if b is None or self._plan is None:
                return
            for kind, target, _fn in self._plan.attach:
                hook = f"{kind}:{target}"
                served = {m for m, h in self.hooks.items() if h == hook}
                if kind != "tracepoint" or not served or not served <= metrics:
                    continue
                try:
                    b.detach_tracepoint(tp=target.encode())
                except Exception as exc:
                    self.notes.append(f"detach {hook} failed: {_one_line(exc)}")
                    continue
                self.hooks = {m: h for m, h in self.hooks.items() if h != hook}

    def set_children(self, enabled: bool) -> None:
        """Count children's state changes per listening port in the kernel (child_deltas), or
        not: a view that only needs the periodic sock_diag dump saves two hash operations
        per transition. Set once, before the first read: turning it back on mid-way would
        make the deltas miss the changes made while it was off."""
        with self._lock:
            self._set_ctl(3, 0 if enabled else 1)

    def set_feed(self, mode: str = "all", port: int | None = None) -> None:
        """Limit the feed in the kernel: "off", "all", or "port" (events whose either port is `port`).

        Counters stay exact whatever the feed does; timelines are built from the feed.
        """
        with self._lock:
            if mode == "off":
                self._set_ctl(0, 0)
            elif mode == "port" and port is not None:
                self._set_ctl(1, int(port))
                self._set_ctl(0, 2)
            else:
                self._set_ctl(0, 1)

    # ---- feed

    def _on_ring_event(self, _ctx, data, size) -> int:
        if len(self._pending) >= self.feed_capacity:
            self._user_lost += 1
        else:
            self._pending.append(ctypes.string_at(data, _EVENT.size))
        return 0

    def _on_perf_event(self, _cpu, data, size) -> None:
        self._on_ring_event(None, data, size)

    def _on_perf_lost(self, lost) -> None:
        self._user_lost += int(lost)

    def _decode(self, raw: bytes) -> Transition:
        (ts, skaddr, ns_old, netns, pid, family, sport, dport, old, new, saddr, daddr, comm) = _EVENT.unpack(raw)
        fam = "ipv4" if family == 2 else "ipv6"
        return Transition(
            time=ts / 1e9 + self._mono_to_unix,
            netns=netns,
            skaddr=skaddr,
            family=fam,
            laddr=_addr(family, saddr),
            lport=sport,
            raddr=_addr(family, daddr),
            rport=dport,
            old=state_name(old),
            new=state_name(new),
            ms_in_old=None if ns_old == _NO_TIME else ns_old / 1e6,
            pid=pid,
            comm=comm.split(b"\0", 1)[0].decode("utf-8", "replace"),
        )

    # ---- reading

    def _empty(self) -> BpfReading:
        return BpfReading(listeners={}, events=(), lost_events=0, live_since=0.0, hooks={})

    def read(self) -> BpfReading:
        if self.state != "live":
            return self._empty()
        with self._lock:
            b = self._bpf
            if b is None:
                return self._empty()
            self._reader = threading.get_ident()
            try:
                return self._read(b)
            except Exception as exc:
                # A map read failing means the programs are gone: say so once, stop.
                self._teardown()
                self._fail(f"BPF read failed: {_one_line(exc)}")
                return self._empty()
            finally:
                self._reader = None
                if self._closed:  # close() came from a signal handler that interrupted us
                    self._teardown()

    def _read(self, b) -> BpfReading:
        # Peaks: switch the kernel to a new interval first, then collect the finished ones.
        self._epoch += 1
        self._set_ctl(2, self._epoch)
        peaks: dict[int, int] = {}
        ptbl = b[b"tq_peaks"]
        stale = []
        for k, v in _items(ptbl):
            if k.epoch < self._epoch:
                peaks[k.sk] = max(peaks.get(k.sk, 0), _int(v))
                stale.append(k)
        for k in stale:
            _delete(ptbl, k)
        reasons: dict[int, dict[str, int]] = {}
        rtbl = b[b"tq_reasons"]
        reason_items = _items(rtbl)  # read before the listeners: see the clean-up below
        for k, v in reason_items:
            name = self._reasons.get(k.reason, f"REASON_{k.reason}")
            per = reasons.setdefault(k.sk, {})
            per[name] = per.get(name, 0) + _int(v)
        listeners: dict[ListenerKey, BpfListenerCounts] = {}
        live_sks: set[int] = set()
        live_ports: set[tuple[int, int]] = set()
        for k, v in _items(b[b"tq_listeners"]):
            live_sks.add(_int(k))
            live_ports.add((v.netns, v.lport))
            sk = _int(k)
            if v.family == 2:
                laddr = ipaddress.IPv4Address(bytes(v.laddr[:4])).compressed
                fam = "ipv4"
            else:
                laddr = ipaddress.IPv6Address(bytes(v.laddr)).compressed
                fam = "ipv6"
            key = ListenerKey(v.netns, fam, laddr, v.lport, v.cookie)
            counts = BpfListenerCounts(
                accepts=v.accepts,
                peak_accept_queue=peaks.get(sk, 0),
                synack_retrans=v.synack_retrans,
                listen_overflow_drops=v.listen_overflow_drops,
                other_rx_drops=v.other_rx_drops,
                resets_sent=v.resets_sent,
                resets_received=v.resets_received,
                syn_overflows=v.syn_overflows if "syn_overflows" in self.hooks else None,
                drop_reasons=reasons.get(sk, {}),
            )
            prev = listeners.get(key)
            listeners[key] = counts if prev is None else _sum_counts(prev, counts)
        if TRANSITIONS in self.hooks:
            deltas: dict[tuple[int, int], dict[str, int]] = {}
            ctbl = b[b"tq_child_states"]
            for k, v in _items(ctbl):
                per = {state_name(i): int(n) for i, n in enumerate(v.n) if n and i not in (7, 10)}
                if not per and (k.netns, k.lport) not in live_ports:
                    _delete(ctbl, k)  # no live child, no listener: a closed port (bounded map)
                    continue
                deltas[(k.netns, k.lport)] = per
            self._child_deltas = deltas
        # Reasons of listeners that closed (each reason entry was created after its
        # listener entry, and both were read in that order).
        for k, _v in reason_items:
            if k.sk not in live_sks:
                _delete(rtbl, k)
        # Feed: bounded by the ring size and feed_capacity.
        if TRANSITIONS in self.hooks:
            if self._plan is not None and self._plan.ringbuf:
                b.ring_buffer_consume()
            else:
                b.perf_buffer_poll(timeout=0)
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: re-anchor to the wall clock each read (NTP steps).
        self._mono_to_unix = time.time() - time.monotonic()
        events = []
        while self._pending:
            tr = self._decode(self._pending.popleft())
            self.timelines.add(tr)
            events.append(tr)
        lost = self._user_lost
        ltbl = b[b"tq_lost"]
        lost += int(ltbl.sum(ctypes.c_int(0)).value)
        uncounted = int(ltbl.sum(ctypes.c_int(1)).value)
        if uncounted and uncounted != self._uncounted:
            self._uncounted = uncounted
            note = f"BPF maps full: {uncounted} listener events not counted (more than {MAX_LISTENERS} listeners?)"
            self.notes = [n for n in self.notes if not n.startswith("BPF maps full")] + [note]
        return BpfReading(
            listeners=listeners,
            events=tuple(events),
            lost_events=lost,
            live_since=self.live_since,
            hooks=dict(self.hooks),
        )

    def child_deltas(self) -> dict[tuple[int, int], dict[str, int]]:
        """At the last read(): per (netns, listening port), children that entered minus left each
        state since live (only children born after live are followed). Add to the per-state
        counts of the last full dump minus this value as it was at that dump."""
        return {k: dict(v) for k, v in self._child_deltas.items()}

    def prog_ids(self) -> list[int]:
        """Kernel ids of the programs this instance loaded (from /proc/self/fdinfo)."""
        b = self._bpf
        ids: list[int] = []
        funcs: list = list(getattr(b, "funcs", {}).values()) if b is not None else []
        for fn in funcs:
            try:
                for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
                    if line.startswith("prog_id:"):
                        ids.append(int(line.split()[1]))
            except OSError:
                pass
        return sorted(ids)

    # ---- per-socket history

    def timeline(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> list[Transition]:
        return self.timelines.by_tuple(netns, family, laddr, lport, raddr, rport)

    def timeline_by_skaddr(self, netns: int, skaddr: int) -> list[Transition]:
        return self.timelines.by_skaddr(netns, skaddr)

    def state_since(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> tuple[str, float] | None:
        entries = self.timelines.by_tuple(netns, family, laddr, lport, raddr, rport)
        if not entries:
            return None
        last = entries[-1]
        return last.new, last.time

    # ---- --ebpf

    def program_text(self) -> str:
        """The program as it is (or would be) compiled; needs neither root nor loading."""
        plan = self._plan
        if plan is None:
            try:
                plan = build_plan(self.port, self.netns, self.feed_capacity, ringbuf=self.ringbuf)
            except Exception as exc:  # --ebpf must print something useful, never a traceback
                return f"// tcpq-top: cannot generate the BPF program: {_one_line(exc)}\n" + BPF_C.read_text()
            if self._thread is None:  # not started: `hooks` says what would serve each metric
                self.hooks = dict(plan.hooks)
                self.notes = list(plan.notes)
        return plan.text()


_ADDRS: dict[tuple[int, bytes], str] = {}


def _addr(family: int, raw: bytes) -> str:
    """Compressed text of an address; cached, since a storm repeats the same few."""
    key = (family, raw)
    text = _ADDRS.get(key)
    if text is None:
        ip = ipaddress.IPv4Address(raw[:4]) if family == 2 else ipaddress.IPv6Address(raw)
        text = ip.compressed
        if len(_ADDRS) > 65536:
            _ADDRS.clear()
        _ADDRS[key] = text
    return text


def _delete(table, key) -> None:
    try:
        del table[key]
    except KeyError:
        pass


def _int(x) -> int:
    return x if isinstance(x, int) else int(x.value)


def _items(table):
    try:
        return list(table.items_lookup_batch())
    except Exception:
        return list(table.items())


def _sum_counts(a: BpfListenerCounts, b: BpfListenerCounts) -> BpfListenerCounts:
    reasons = dict(a.drop_reasons)
    for k, v in b.drop_reasons.items():
        reasons[k] = reasons.get(k, 0) + v
    return BpfListenerCounts(
        accepts=a.accepts + b.accepts,
        peak_accept_queue=max(a.peak_accept_queue, b.peak_accept_queue),
        synack_retrans=a.synack_retrans + b.synack_retrans,
        listen_overflow_drops=a.listen_overflow_drops + b.listen_overflow_drops,
        other_rx_drops=a.other_rx_drops + b.other_rx_drops,
        resets_sent=a.resets_sent + b.resets_sent,
        resets_received=a.resets_received + b.resets_received,
        syn_overflows=None if a.syn_overflows is None or b.syn_overflows is None else a.syn_overflows + b.syn_overflows,
        drop_reasons=reasons,
    )
