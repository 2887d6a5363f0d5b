"""Prometheus metric families from one Snapshot: pure, no I/O, unit-tested.

What is exported and why (docs/EXPORTER.md):
- one listener = one label set {netns, laddr, lport, cookie}: the socket cookie is the
  kernel's own identity of the socket, fixed for its life, and it is what tells the
  members of an SO_REUSEPORT group apart (they share netns/laddr/lport);
- owner and netns name ride on `tcpq_listener_info` only (volatile values never label a
  counter: a pid change would otherwise start a new counter series);
- a value the kernel/probes cannot tell (None in the model) is an absent sample, never 0;
- peer addresses and ports never become labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ..model import LatencySummary, Listener, Snapshot

IDENTITY = ("netns", "laddr", "lport", "cookie")

# The exported `le` bounds of the latency histograms, in seconds: the kernel's fine buckets
# are re-bucketed into these (latency_buckets). Sub-millisecond to a minute: accept waits of
# a healthy server sit in the first few, a stalled one in the last.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

# (family name without _total, help, Listener attribute)
LISTENER_GAUGES = (
    ("tcpq_listener_accept_queue_length", "Children in the accept queue now (sk_ack_backlog; ss Recv-Q).", "accept_queue"),
    ("tcpq_listener_accept_queue_limit",
     "Accept queue limit (sk_max_ack_backlog: min(listen() backlog, somaxconn); ss Send-Q). Full when length > limit.",
     "backlog"),
    ("tcpq_listener_syn_queue_length", "Request sockets (SYN_RECV) of this listener now.", "syn_queue"),
)
LISTENER_COUNTERS = (
    ("tcpq_listener_drops", "Packets the kernel dropped on this listener since it was created (sk_drops; ss skmem d).",
     "drops"),
    ("tcpq_listener_overflows", "Accept queue overflows of this listener since the probes went live (eBPF).",
     "overflows"),
    ("tcpq_listener_queued", "Children that completed the handshake and entered the accept queue since the probes went live.",
     "queued"),
    ("tcpq_listener_accepted", "accept() calls that returned a child of this listener since the probes went live.",
     "accepted"),
    ("tcpq_listener_synack_retransmits", "SYN-ACK retransmits of this listener since the probes went live.",
     "synack_retrans"),
    ("tcpq_listener_resets_sent", "RSTs sent by this listener's sockets since the probes went live.", "resets_sent"),
)
LISTENER_HISTOGRAMS = (
    ("tcpq_listener_accept_wait_seconds", "Time from entering the accept queue to the accept() that returned it.",
     "accept_wait"),
    ("tcpq_listener_handshake_seconds", "Handshake time: SYN received to the third ACK (SYN_RECV -> ESTABLISHED).",
     "handshake"),
)
# TcpExt name -> exported counter (without _total)
NETNS_COUNTERS = (
    ("tcpq_netns_listen_overflows", "TcpExt ListenOverflows of the network namespace.", "ListenOverflows"),
    ("tcpq_netns_listen_drops", "TcpExt ListenDrops of the network namespace.", "ListenDrops"),
    ("tcpq_netns_syncookies_sent", "TcpExt SyncookiesSent of the network namespace.", "SyncookiesSent"),
    ("tcpq_netns_reqq_full_drops", "TcpExt TCPReqQFullDrop (SYNs dropped, SYN queue full, no cookies).",
     "TCPReqQFullDrop"),
)


def identity(listener: Listener) -> list[str]:
    key = listener.key
    return [str(key.netns), key.laddr, str(key.lport), str(key.cookie)]


def latency_buckets(summary: LatencySummary, bounds: Sequence[float] = LATENCY_BOUNDS) -> list[tuple[str, float]]:
    """The cumulative `le` buckets of a Prometheus histogram from the kernel's fine buckets.

    A fine bucket (upper bound u, n) is counted under the smallest `le` >= u: every one of its
    samples is <= u <= le, so no `le` bucket ever claims a sample that may be above it. Where
    a fine bucket straddles an `le` bound its samples go one bound up (the count at that `le`
    is then a lower bound); where the bounds coincide it is exact. +Inf is `count`; each
    bucket is capped by it, so the series is monotonic whatever the fine buckets say.
    """
    per_bound = [0] * len(bounds)
    for upper, n in summary.buckets:
        if n <= 0:
            continue
        for i, le in enumerate(bounds):
            if upper <= le * (1 + 1e-9):  # float bounds: 0.001 from 1e6 ns vs 0.001
                per_bound[i] += n
                break
    out: list[tuple[str, float]] = []
    running = 0
    for le, n in zip(bounds, per_bound, strict=True):
        running += n
        out.append((_le(le), float(min(running, summary.count))))
    out.append(("+Inf", float(summary.count)))
    return out


def _le(value: float) -> str:
    # Prometheus' own float formatting of le (0.005, 1.0, 10.0): the same text every scrape.
    return repr(float(value))


def activity(listener: Listener) -> tuple:
    """How much a listener needs watching, most first when sorted descending.

    Losing connections now (overflows + drops per second), then a full or filling accept
    queue (length / limit), then a SYN queue, then CLOSE_WAIT children piling up, then
    traffic (children queued per second). Unknowns count as 0 here only for the ranking.
    """
    fill = listener.accept_queue / listener.backlog if listener.backlog else float(listener.accept_queue > 0)
    return (
        (listener.overflow_rate or 0.0) + listener.drop_rate,
        fill,
        listener.syn_queue,
        listener.children.get("CLOSE_WAIT", 0),
        listener.queued_rate or 0.0,
    )


def select(listeners: Sequence[Listener], limit: int) -> tuple[list[Listener], int]:
    """The `limit` most active listeners (activity), and how many were left out.

    Ties (most listeners on a quiet host) break on the identity, so a quiet set exported
    once stays the exported set while nothing changes."""
    if len(listeners) <= limit:
        return list(listeners), 0
    ordered = sorted(listeners, key=lambda lst: (lst.key.netns, lst.key.lport, lst.key.laddr, lst.key.cookie))
    ordered.sort(key=activity, reverse=True)
    return ordered[:limit], len(listeners) - limit


@dataclass(frozen=True)
class ExporterState:
    """What the exporter knows about itself, next to the snapshot it serves."""

    sample_duration_s: float | None = None
    sample_errors: int = 0
    listeners_dropped: int = 0
    samples: int = 0


def families(
    snap: Snapshot | None, state: ExporterState, listeners: Sequence[Listener] | None = None
) -> Iterator[Metric]:
    """Every family for one snapshot, in the exported order. `listeners`: the ones to export
    (select()); default all. The server splices the listener part per listener
    (server.ListenerCache); this whole-snapshot form is its reference (tests)."""
    yield from head_families(snap, state)
    if snap is None:
        return
    yield from listener_families(snap.listeners if listeners is None else listeners, netns_names(snap))[0]
    yield from netns_families(snap)


def netns_names(snap: Snapshot) -> dict[int, str | None]:
    return {ns.inode: ns.name for ns in snap.netns}


def head_families(snap: Snapshot | None, state: ExporterState) -> Iterator[Metric]:
    """About the exporter itself."""
    up = GaugeMetricFamily("tcpq_bpf_up", "1 while the eBPF probes are live, 0 otherwise (netlink metrics stay).")
    up.add_metric([], 1.0 if snap is not None and snap.sources.bpf else 0.0)
    yield up
    errors = CounterMetricFamily("tcpq_sample_errors", "Samples that failed (the previous snapshot stays served).")
    errors.add_metric([], float(state.sample_errors))
    yield errors
    dropped = GaugeMetricFamily(
        "tcpq_listeners_dropped_from_export",
        "Listeners left out of this export by --max-listeners (the least active ones).",
    )
    dropped.add_metric([], float(state.listeners_dropped))
    yield dropped
    if state.sample_duration_s is not None:
        dur = GaugeMetricFamily("tcpq_sample_duration_seconds", "Wall time the last sample of the kernel took.")
        dur.add_metric([], state.sample_duration_s)
        yield dur
    if snap is None:
        return
    netlink = GaugeMetricFamily("tcpq_netlink_up", "1 when sock_diag answered in the exporter's own netns.")
    netlink.add_metric([], 1.0 if snap.sources.netlink else 0.0)
    yield netlink
    stamp = GaugeMetricFamily("tcpq_sample_timestamp_seconds", "Unix time of the sample served.")
    stamp.add_metric([], snap.time)
    yield stamp
    total = GaugeMetricFamily("tcpq_listeners", "Listening sockets seen in the last sample (exported or not).")
    total.add_metric([], float(len(snap.listeners)))
    yield total
    if snap.sources.bpf:
        lost = CounterMetricFamily("tcpq_lost_events", "Feed events the kernel could not hand over (counts stay exact).")
        lost.add_metric([], float(snap.sources.lost_events))
        yield lost


def listener_families(
    listeners: Iterable[Listener], netns_names: Mapping[int, str | None]
) -> tuple[list[Metric], list[list[int]]]:
    """The per-listener families (always all of them, in this order, empty or not), and
    counts[f][i]: how many samples listener i has in family f (0 = absent, a histogram many)."""
    listeners = list(listeners)
    ids = [identity(lst) for lst in listeners]
    fams: list[Metric] = []
    counts: list[list[int]] = []

    def fill(fam: Metric, add) -> None:
        per: list[int] = []
        for lst, ident in zip(listeners, ids, strict=True):
            before = len(fam.samples)
            add(fam, lst, ident)
            per.append(len(fam.samples) - before)
        fams.append(fam)
        counts.append(per)

    info = GaugeMetricFamily(
        "tcpq_listener_info",
        "1 per listener; its owner and netns name as labels (join with group_left). Empty = unknown.",
        labels=[*IDENTITY, "family", "pid", "comm", "netns_name"],
    )
    fill(info, lambda fam, lst, ident: fam.add_metric(
        [*ident, lst.key.family, "" if lst.pid is None else str(lst.pid), lst.comm or "",
         netns_names.get(lst.key.netns) or ""], 1.0))
    for name, doc, attr in LISTENER_GAUGES:
        fill(GaugeMetricFamily(name, doc, labels=IDENTITY),
             lambda fam, lst, ident, attr=attr: fam.add_metric(ident, float(getattr(lst, attr))))

    def close_wait(fam, lst, ident) -> None:
        value = lst.children.get("CLOSE_WAIT")
        if value is not None:
            fam.add_metric(ident, float(value))

    fill(GaugeMetricFamily(
        "tcpq_listener_close_wait",
        "Children in CLOSE_WAIT now: the peer closed, the application has not (absent before the first children dump).",
        labels=IDENTITY,
    ), close_wait)

    def counter(fam, lst, ident, attr: str) -> None:
        value = getattr(lst, attr)
        if value is not None:
            fam.add_metric(ident, float(value))

    for name, doc, attr in LISTENER_COUNTERS:
        fill(CounterMetricFamily(name, doc, labels=IDENTITY),
             lambda fam, lst, ident, attr=attr: counter(fam, lst, ident, attr))

    def histogram(fam, lst, ident, attr: str) -> None:
        summary: LatencySummary | None = getattr(lst, attr)
        if summary is not None and math.isfinite(summary.sum_s):
            fam.add_metric(ident, latency_buckets(summary), summary.sum_s)

    for name, doc, attr in LISTENER_HISTOGRAMS:
        fill(HistogramMetricFamily(name, doc, labels=IDENTITY),
             lambda fam, lst, ident, attr=attr: histogram(fam, lst, ident, attr))
    return fams, counts


def netns_families(snap: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "tcpq_netns_info", "1 per network namespace read; its name and where the name came from (empty = unknown).",
        labels=["netns", "netns_name", "name_source"],
    )
    for ns in snap.netns:
        info.add_metric([str(ns.inode), ns.name or "", ns.name_source or ""], 1.0)
    yield info
    for name, doc, counter in NETNS_COUNTERS:
        fam = CounterMetricFamily(name, doc, labels=["netns"])
        for ns in snap.netns:
            value = ns.counters.get(counter)
            if value is not None:
                fam.add_metric([str(ns.inode)], float(value))
        yield fam
