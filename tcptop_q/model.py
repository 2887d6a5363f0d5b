"""Frozen data the rest of tcpq-top passes around, and pure functions over it.

Nothing here touches the kernel or imports textual: probes fill these records,
the sampler merges them into one Snapshot per tick, the UI only reads them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from . import codec

SCHEMA = "tcpq-top.snapshot/1"

# Kernel TCP states (include/net/tcp_states.h), numbered as the kernel does.
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}

# The netns counters the JSON contract names, in /proc/net/netstat TcpExt spelling.
NETNS_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
)
# Read as well, shown in the UI / diagnosis, not in the contract's required set.
NETNS_EXTRA_COUNTERS = ("TCPDeferAcceptDrop", "EmbryonicRsts", "TCPAbortOnOverflow")


def v4_of_mapped(addr: str) -> str | None:
    """127.0.0.1 for ::ffff:7f00:1 (an IPv4 peer of a dual-stack socket); None otherwise."""
    if not addr.startswith("::ffff:"):
        return None
    import ipaddress

    try:
        mapped = ipaddress.IPv6Address(addr).ipv4_mapped
    except ValueError:
        return None
    return str(mapped) if mapped else None


def state_name(num: int) -> str:
    return TCP_STATES.get(num, f"STATE_{num}")


class ListenerKey(NamedTuple):
    """Identifies one listening socket across ticks.

    (netns, family, laddr, lport) is unique except for SO_REUSEPORT groups, where
    the socket cookie (never 0 for a dumped socket) tells the members apart.
    A NamedTuple, not a dataclass: it is built and hashed for every listener on
    every tick, and a tuple does both in C.
    """

    netns: int
    family: str  # "ipv4" | "ipv6"
    laddr: str
    lport: int
    cookie: int = 0

    def label(self) -> str:
        host = f"[{self.laddr}]" if self.family == "ipv6" else self.laddr
        return f"{host}:{self.lport}"


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """A latency distribution kept in the kernel as a histogram, since the probes went live.

    Quantiles are None when count is 0. `buckets` are the non-empty histogram buckets as
    (upper bound in seconds, count), ascending: enough to draw it or to re-bucket it.
    """

    count: int
    sum_s: float
    max_s: float
    p50_s: float | None
    p90_s: float | None
    p99_s: float | None
    buckets: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Listener:
    # Field order is the JSON order; every field is in the JSON and in recordings (tcptop_q/codec.py).
    key: ListenerKey = field(metadata={"json": "inline"})  # netns, family, laddr, lport, cookie
    inode: int
    pid: int | None  # the primary owner: the lowest pid that holds the socket (docs/JSON.md)
    comm: str | None
    accept_queue: int  # sk_ack_backlog (idiag_rqueue)
    backlog: int  # sk_max_ack_backlog (idiag_wqueue)
    syn_queue: int  # request socks (SYN_RECV) counted in the dump
    drops: int  # sk_drops since the socket was created
    drop_rate: float
    children: Mapping[str, int] = field(default_factory=dict)
    # BPF-derived; None = this kernel/privilege cannot tell (never "zero").
    overflows: int | None = None
    overflow_rate: float | None = None
    synack_retrans: int | None = None
    synack_retrans_rate: float | None = None
    # Children that completed the handshake and entered the accept queue (NOT accept() calls).
    # JSON also writes them as `accepts`/`accept_rate`: deprecated aliases, kept for schema tcpq-top.snapshot/1.
    queued: int | None = field(default=None, metadata={"json_aliases": ("accepts",)})
    queued_rate: float | None = field(default=None, metadata={"json_aliases": ("accept_rate",)})
    # accept() calls that returned a child of this listener.
    accepted: int | None = None
    accepted_rate: float | None = None
    peak_accept_queue: int | None = None
    resets_sent: int | None = None
    resets_received: int | None = None
    # Time from entering the accept queue to the accept() that returned it; handshake time
    # (LISTEN -> SYN_RECV to SYN_RECV -> ESTABLISHED). Since the probes went live.
    accept_wait: LatencySummary | None = None
    handshake: LatencySummary | None = None
    # accept wait over the last few ticks only (the histogram's recent delta): WAIT p99 column.
    accept_wait_recent: LatencySummary | None = None
    # kfree_skb drop reasons charged to this listener since live: reason name -> count.
    drop_reasons: Mapping[str, int] | None = None
    # Every process holding the socket (an fd in /proc/PID/fd), ascending; None = none known.
    holders: tuple[int, ...] | None = None
    # The SO_REUSEPORT group this listener is a member of (tcptop_q/reuseport.py); None = none.
    reuseport_group: str | None = None

    @property
    def netns(self) -> int:
        return self.key.netns

    @property
    def family(self) -> str:
        return self.key.family

    @property
    def laddr(self) -> str:
        return self.key.laddr

    @property
    def lport(self) -> int:
        return self.key.lport


@dataclass(frozen=True, slots=True)
class Connection:
    """A child of a listener (or any non-LISTEN socket) seen in a dump."""

    netns: int
    family: str
    state: str
    laddr: str
    lport: int
    raddr: str
    rport: int
    inode: int
    cookie: int
    recv_q: int
    send_q: int
    pid: int | None = None
    comm: str | None = None
    age_s: float | None = None  # from BPF timeline; None before probes saw it
    # The listener this socket belongs to, decided by the sampler (tcptop_q/attribution.py).
    listener: ListenerKey | None = field(default=None, metadata={"json": False})
    # Still in the accept queue (no process has it): seconds since it was queued (BPF link).
    queued_s: float | None = None


@dataclass(frozen=True, slots=True)
class CloseWait:
    netns: int
    family: str
    laddr: str
    lport: int
    raddr: str
    rport: int
    inode: int
    cookie: int
    pid: int | None
    comm: str | None
    recv_q: int
    age_s: float | None
    # The listener this socket belongs to (None: no listener on its port any more).
    listener: ListenerKey | None = field(default=None, metadata={"json": False})
    # Still in the accept queue (never accepted): seconds since it was queued (BPF link).
    queued_s: float | None = None


@dataclass(frozen=True)
class NetnsCounters:
    inode: int
    # TcpExt name -> value (absolute). The contract writes the NETNS_COUNTERS (and the extras read)
    # as top-level fields; a recording keeps them all.
    counters: Mapping[str, int] = field(metadata={"json": "record"})
    rates: Mapping[str, float] = field(default_factory=dict)  # per second over interval
    sysctls: Mapping[str, int] = field(default_factory=dict)  # somaxconn, tcp_max_syn_backlog, ...
    # The best name the host can tell ("host", an `ip netns` name, a container or pod) and where
    # it came from ("init", "ip-netns", "podman", "docker", "containerd", "k8s", ...); None = inode only.
    name: str | None = field(default=None, metadata={"json_name": "netns_name"})
    name_source: str | None = field(default=None, metadata={"json_name": "netns_source"})


@dataclass(frozen=True, slots=True)
class Transition:
    """One sock:inet_sock_set_state event (the live feed / a timeline entry)."""

    time: float  # unix seconds
    netns: int
    skaddr: int
    family: str
    laddr: str
    lport: int
    raddr: str
    rport: int
    old: str
    new: str
    ms_in_old: float | None
    pid: int
    comm: str
    # The listener whose socket this is (or the listener itself), decided by the sampler.
    listener: ListenerKey | None = field(default=None, metadata={"json": False})
    # "state" (old -> new), or "accept": accept() returned this socket to pid (fd, None where
    # the kernel path has no descriptor) after ms_in_old milliseconds in the accept queue.
    kind: str = "state"
    fd: int | None = None

    def describe(self) -> str:
        if self.kind == "accept":
            wait = "" if self.ms_in_old is None else f" after {self.ms_in_old:.1f} ms in the accept queue"
            fd = "" if self.fd is None else f" (fd {self.fd})"
            return f"accepted by pid {self.pid}{fd}{wait}"
        return f"{self.old} -> {self.new}"


@dataclass(frozen=True)
class Sources:
    netlink: bool
    bpf: bool
    bpf_error: str | None = None
    bpf_state: str = field(default="off", metadata={"json": "record"})  # "loading" | "live" | "off"
    hooks: Mapping[str, str] = field(default_factory=dict)  # metric -> hook serving it
    lost_events: int = 0
    notes: Sequence[str] = ()  # other degradations, one line each


@dataclass(frozen=True)
class Snapshot:
    time: float
    interval: float
    kernel: str
    hostname: str
    sources: Sources
    netns: Sequence[NetnsCounters]
    listeners: Sequence[Listener]
    close_wait: Sequence[CloseWait]
    # Transitions that arrived since the previous snapshot (feed batch).
    events: Sequence[Transition] = ()
    # When the sampler did a children dump this tick: children per listener key.
    connections: Mapping[ListenerKey, Sequence[Connection]] | None = None
    seq: int = 0


# ---------------------------------------------------------------- pure helpers


def rate(now: int | None, before: int | None, interval: float) -> float | None:
    """Per-second rate between two absolute counter readings; None if either is unknown."""
    if now is None or before is None or interval <= 0:
        return None
    delta = now - before
    if delta < 0:  # counter reset (socket re-created under the same key)
        delta = now
    return delta / interval


SORT_KEYS = (
    "overflow_rate",
    "drop_rate",
    "accept_queue",
    "backlog",
    "fill",
    "syn_queue",
    "drops",
    "overflows",
    "synack_retrans",
    "synack_retrans_rate",
    "queued",
    "queued_rate",
    "accepted",
    "accepted_rate",
    "accept_wait_p99",
    "peak_accept_queue",
    "lport",
    "pid",
    "netns",
    "established",
    "close_wait",
)


def sort_value(listener: Listener, key: str) -> float:
    """Numeric value of a listener for sorting; unknown (None) sorts lowest."""
    if key == "fill":
        return listener.accept_queue / listener.backlog if listener.backlog else float(listener.accept_queue)
    if key == "established":
        return float(listener.children.get("ESTABLISHED", 0))
    if key == "close_wait":
        return float(listener.children.get("CLOSE_WAIT", 0))
    if key in ("lport", "netns"):
        return float(getattr(listener.key, key))
    if key == "accept_wait_p99":
        recent = listener.accept_wait_recent
        return float("-inf") if recent is None or recent.p99_s is None else recent.p99_s
    value = getattr(listener, key)
    return float("-inf") if value is None else float(value)


def sort_listeners(
    listeners: Sequence[Listener], key: str = "overflow_rate", reverse: bool = False
) -> list[Listener]:
    """Worst first: by key descending, then drop rate, then accept-queue fill; stable by address."""
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}")
    base = sorted(listeners, key=lambda lst: (lst.key.netns, lst.key.lport, lst.key.laddr, lst.key.cookie))
    ordered = sorted(
        base,
        key=lambda lst: (
            sort_value(lst, key),
            sort_value(lst, "drop_rate"),
            sort_value(lst, "fill"),
        ),
        reverse=True,
    )
    if reverse:
        ordered.reverse()
    return ordered


def latency_to_json(lat: LatencySummary | None) -> dict | None:
    return None if lat is None else codec.to_json(lat)


def listener_to_json(listener: Listener, netns: NetnsCounters | None = None) -> dict:
    """One listener as the contract writes it: every Listener field (the key's fields inline),
    plus the deprecated `accepts`/`accept_rate` aliases; None stays null. `netns` is the
    snapshot's entry for the listener's namespace: its name is kept there only, and repeated here."""
    out = _LISTENER_JSON(listener)
    out["netns_name"] = netns.name if netns is not None else None
    out["netns_source"] = netns.name_source if netns is not None else None
    return out


def netns_to_json(ns: NetnsCounters, *, record: bool = False) -> dict:
    out = {
        **codec.to_json(ns, record=record),
        **{name: int(ns.counters.get(name, 0)) for name in NETNS_COUNTERS},
        **{name: int(ns.counters[name]) for name in NETNS_EXTRA_COUNTERS if name in ns.counters},
    }
    return out


def _hooks_json(hooks: Mapping[str, str]) -> dict[str, str]:
    out = dict(hooks)
    if "queued" in out:  # deprecated alias (docs/JSON.md), for schema tcpq-top.snapshot/1 only
        out.setdefault("accepts", out["queued"])
    return out


def snapshot_to_json(snap: Snapshot, *, record: bool = False) -> dict:
    """The `--once --json` contract (docs/JSON.md); fields may be added, never renamed.
    record=True adds what only recordings carry (fields marked "record", tcptop_q/codec.py)."""
    by_inode = {ns.inode: ns for ns in snap.netns}
    return {
        "schema": SCHEMA,
        "time": snap.time,
        "interval": snap.interval,
        "kernel": snap.kernel,
        "hostname": snap.hostname,
        "sources": {**codec.to_json(snap.sources, record=record), "hooks": _hooks_json(snap.sources.hooks)},
        "netns": [netns_to_json(ns, record=record) for ns in snap.netns],
        "listeners": [listener_to_json(lst, by_inode.get(lst.key.netns)) for lst in snap.listeners],
        "reuseport_groups": _reuseport_groups_json(snap.listeners),
        "close_wait": [socket_to_json(cw) for cw in snap.close_wait],
    }


def _reuseport_groups_json(listeners: Sequence[Listener]) -> list[dict]:
    from .reuseport import group_to_json, groups  # reuseport imports this module

    return [group_to_json(g) for g in groups(listeners)]


def socket_to_json(sock: CloseWait | Connection | Transition) -> dict:
    """A CLOSE_WAIT socket, a child or a feed event as JSON. `listener` stays out: it is the sampler's
    attribution, which a reader re-derives from the listeners (tcptop_q/attribution.py)."""
    return codec.to_json(sock)


# ------------------------------------------------------------- BPF raw readings


@dataclass(frozen=True)
class BpfListenerCounts:
    """What the eBPF programs counted for one listener since they went live.

    All cumulative since live, except peak_accept_queue which is the highest
    sk_ack_backlog seen at enqueue since the previous read (reset on read).
    """

    queued: int = 0  # children queued (sock:sk_data_ready on LISTEN, or kprobe fallback)
    peak_accept_queue: int = 0
    synack_retrans: int = 0
    listen_overflow_drops: int = 0  # third-ACK overflows (kfree_skb, rx_sk=listener, TCP_LISTEN_OVERFLOW)
    other_rx_drops: int = 0  # other kfree_skb events with rx_sk=listener (each +1 sk_drops)
    syn_overflows: int | None = None  # only where a kprobe sees the SYN-path overflow directly
    resets_sent: int = 0
    resets_received: int = 0
    drop_reasons: Mapping[str, int] = field(default_factory=dict)
    # accept() calls that returned a child (accept.bpf.c), and two latency histograms
    # (accept wait, handshake) as they are in the kernel: probes/layout.py bucket index -> count.
    accepted: int = 0
    accept_wait: HistCounts | None = None
    handshake: HistCounts | None = None


@dataclass(frozen=True)
class HistCounts:
    """A kernel latency histogram: samples, sum and exact max in ns, bucket index -> count."""

    count: int = 0
    sum_ns: int = 0
    max_ns: int = 0
    buckets: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BpfReading:
    """One read of the BPF side, taken by the sampler once per tick."""

    # Keyed by ListenerKey; cookie may be 0 when the kernel had not generated one yet.
    listeners: Mapping[ListenerKey, BpfListenerCounts]
    events: Sequence[Transition]  # feed events since the previous read (bounded)
    lost_events: int  # cumulative
    live_since: float  # unix time the probes attached
    hooks: Mapping[str, str]  # metric -> hook, e.g. {"queued": "tracepoint:sock:sk_data_ready"}
    # The same counts by listener (netns, socket inode): joins the rows of listeners whose
    # entry has no cookie (the kernel generated none before the probes first saw them).
    by_inode: Mapping[tuple[int, int], BpfListenerCounts] = field(default_factory=dict)


# ------------------------------------------------------------------ safe text

_INERT_CACHE: dict[str, str] = {}


def inert(value: str | None, unknown: str = "-") -> str:
    """Process- or peer-supplied text made inert for a terminal: every control and format
    character (C0, C1, DEL, the bidi overrides U+202A-U+202E, U+2066-U+2069, U+200E/F,
    U+061C, ...: Unicode category C*) replaced by a visible escape; None -> `unknown`.
    The one function the TUI (widgets/text.py) and --batch (safe_text) both use."""
    if value is None:
        return unknown
    cached = _INERT_CACHE.get(value)
    if cached is not None:
        return cached
    out = []
    for ch in value:
        if ch.isprintable() and unicodedata.category(ch)[0] != "C":
            out.append(ch)
        elif ch == "\x00":
            out.append(" ")  # cmdline argument separator
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    result = "".join(out)
    if len(_INERT_CACHE) < 65536:
        _INERT_CACHE[value] = result
    return result


def safe_text(text: str | None, limit: int = 64) -> str:
    """`inert(text)`, long text cut with an ellipsis (undecodable bytes already replaced)."""
    if text is None:
        return "-"
    out = inert(text)
    if len(out) > limit:
        out = out[: max(0, limit - 1)] + "…"
    return out


_LISTENER_JSON = codec.encoder(Listener)
