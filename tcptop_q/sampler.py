"""Merge one tick of kernel readings into an immutable Snapshot.

kernel -> probes (sock_diag, /proc, BPF) -> Sampler -> Snapshot. No textual here.
The Sampler keeps only what rates and attribution need: the previous tick's
absolute counters and the sk_drops baseline taken when BPF went live. The
bounded per-listener history for sparklines lives with the UI that draws it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from . import lifecycle, model
from .model import (
    BpfListenerCounts,
    BpfReading,
    CloseWait,
    Connection,
    Listener,
    ListenerKey,
    NetnsCounters,
    Snapshot,
    Sources,
    Transition,
)
from .probes import diag as diagmod
from .probes.diag import DiagRow, DiagSocket
from .probes.netns import NetnsEnterer, NetnsRef, discover
from .probes.netstat import NetnsFiles
from .probes.owners import OwnerMap

FAMILY: dict[int, str] = {int(socket.AF_INET): "ipv4", int(socket.AF_INET6): "ipv6"}
WILDCARD = {"ipv4": "0.0.0.0", "ipv6": "::"}


@dataclass
class NetnsRaw:
    inode: int
    counters: dict[str, int]
    sysctls: dict[str, int]
    rows: list[DiagRow]  # LISTEN, SYN_RECV (request socks), CLOSE_WAIT
    children: list[DiagRow] | None = None  # every non-LISTEN state, on children ticks


@dataclass
class RawTick:
    mono: float
    wall: float
    netns: dict[int, NetnsRaw]
    notes: list[str] = field(default_factory=list)
    netlink_ok: bool = True  # sock_diag answered in our own netns this tick


class _NetnsHandle:
    def __init__(self, ref: NetnsRef) -> None:
        self.ref = ref
        self.diag = DiagSocket()
        try:
            self.files: NetnsFiles | None = NetnsFiles()
        except OSError:
            self.files = None

    def close(self) -> None:
        self.diag.close()
        if self.files is not None:
            self.files.close()


class KernelReader:
    """Reads sock_diag and TcpExt in every (or one) network namespace.

    Must be used from one thread only (setns is per thread).
    """

    def __init__(self, netns: int | None = None, all_netns: bool = True) -> None:
        self.only_netns = netns
        self.all_netns = all_netns
        self.enterer = NetnsEnterer()
        self.handles: dict[int, _NetnsHandle] = {}
        self.refs: dict[int, NetnsRef] = {}
        self.last_discover = float("-inf")
        self.discover_every = 2.0
        self.failed: dict[int, str] = {}

    @property
    def home(self) -> int:
        return self.enterer.home

    def _refresh(self, force: bool = False) -> list[str]:
        notes: list[str] = []
        now = time.monotonic()
        if force or now - self.last_discover >= self.discover_every:
            self.last_discover = now
            refs = discover() if self.all_netns else {}
            if self.home not in refs:
                refs[self.home] = NetnsRef(self.home, "/proc/thread-self/ns/net", os.getpid())
            if self.only_netns is not None:
                refs = {k: v for k, v in refs.items() if k == self.only_netns}
            self.refs = refs
            # Close handles of namespaces nobody refers to any more: ours would pin them.
            for ino in list(self.handles):
                if ino not in refs:
                    self.handles.pop(ino).close()
            self.failed = {k: v for k, v in self.failed.items() if k in refs}
        for ino, ref in self.refs.items():
            if ino in self.handles or ino in self.failed:
                continue
            try:
                self.handles[ino] = self.enterer.run_in(ref, partial(_NetnsHandle, ref))
            except OSError as exc:
                self.failed[ino] = exc.strerror or str(exc)
        if self.only_netns is not None and not self.refs:
            notes.append(f"netns {self.only_netns} not found (no process and no /run/netns entry has it)")
        if self.failed:
            denied = sum(1 for v in self.failed.values() if "ermission" in v or "not permitted" in v)
            if denied:
                notes.append(f"{denied} other network namespace(s) not readable: entering them needs CAP_SYS_ADMIN")
            if len(self.failed) > denied:
                notes.append(f"{len(self.failed) - denied} network namespace(s) could not be opened")
        return notes

    def read(self, children: bool = False) -> RawTick:
        notes = self._refresh()
        out: dict[int, NetnsRaw] = {}
        home_ok = True  # another netns vanishing mid-read is ordinary; our own failing is not
        for ino, handle in list(self.handles.items()):
            try:
                rows = handle.diag.dump_both(diagmod.TICK_STATES, meminfo=True)
                kids = handle.diag.dump_both(diagmod.CHILD_STATES, reuse=False) if children else None
                counters = handle.files.tcpext() if handle.files else {}
                sysctls = handle.files.sysctls() if handle.files else {}
            except OSError as exc:
                # The netns went away between discovery and read.
                handle.close()
                del self.handles[ino]
                notes.append(f"netns {ino}: {exc.strerror or exc}")
                home_ok = home_ok and ino != self.home
                continue
            out[ino] = NetnsRaw(ino, counters, sysctls, rows, kids)
        return RawTick(time.monotonic(), time.time(), out, notes, netlink_ok=home_ok)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()
        self.enterer.close()


# ----------------------------------------------------------------- attribution


def _listener_index(listeners: Iterable[tuple[ListenerKey, Any]]) -> dict[tuple[int, int, str], ListenerKey]:
    """(netns, lport, laddr) -> listener key; for SO_REUSEPORT groups the first socket stands for all."""
    index: dict[tuple[int, int, str], ListenerKey] = {}
    for key, _ in listeners:
        index.setdefault((key.netns, key.lport, key.laddr), key)
    return index


def owner_listener(
    index: Mapping[tuple[int, int, str], ListenerKey], netns: int, family: str, laddr: str, lport: int
) -> ListenerKey | None:
    """The listener a child or request socket belongs to.

    Exact local address first; then the wildcard of its family; a v4-mapped
    address on an IPv6 socket also matches an IPv4 listener on that address.
    """
    key = index.get((netns, lport, laddr))
    if key is not None:
        return key
    if family == "ipv6" and laddr.startswith("::ffff:"):
        v4 = model.v4_of_mapped(laddr)
        if v4 is not None:
            key = index.get((netns, lport, v4)) or index.get((netns, lport, "0.0.0.0"))
            if key is not None:
                return key
    return index.get((netns, lport, WILDCARD[family]))


def drop_reasons_of(counts: BpfListenerCounts, hooks: Mapping[str, str]) -> dict[str, int] | None:
    """kfree_skb drop reasons charged to a listener since the probes went live (reason name ->
    count); None where no drop hook is attached (unknown, never "no drops")."""
    if "drop_reasons" not in hooks:
        return None
    return {name: n for name, n in counts.drop_reasons.items() if n}


def counts_since(now: BpfListenerCounts, base: BpfListenerCounts | None) -> BpfListenerCounts:
    """The drop-related event counts of `now` minus those at `base` (None: nothing before)."""
    if base is None:
        return now
    return dataclasses.replace(
        now,
        listen_overflow_drops=now.listen_overflow_drops - base.listen_overflow_drops,
        other_rx_drops=now.other_rx_drops - base.other_rx_drops,
        syn_overflows=(None if now.syn_overflows is None else now.syn_overflows - (base.syn_overflows or 0)),
    )


def overflows_since_live(
    sk_drops_delta: int, counts: BpfListenerCounts, reqq_full_drops: int = 0
) -> int:
    """Accept-queue overflows of one listener since the probes went live.

    sk_drops grows by 1 per SYN-path overflow (no tracepoint sees that SYN: it is
    freed with consume_skb), by 2 per third-ACK overflow (tcp_listendrop, then
    the ACK is discarded through sk_drops_add) and by 1 per other drop that
    kfree_skb reports with rx_sk = listener (a TCP_DEFER_ACCEPT bare ACK, a
    socket filter). SYNs dropped because the SYN queue is full also count 1 and
    have no event of their own: the caller passes the netns TCPReqQFullDrop
    delta when this listener is the only one that can have caused it.
    """
    third = counts.listen_overflow_drops
    if counts.syn_overflows is not None:
        return counts.syn_overflows + third
    syn_path = sk_drops_delta - 2 * third - counts.other_rx_drops - reqq_full_drops
    return max(0, syn_path) + third


# ---------------------------------------------------------------------- sampler


class Sampler:
    """Builds Snapshots. One instance per collector thread."""

    def __init__(
        self,
        *,
        bpf: Any = None,
        netns: int | None = None,
        all_netns: bool = True,
        owners: OwnerMap | None = None,
        children_every: float | None = None,
        blocking_owners: bool = False,
        keep_connections: bool = True,
    ) -> None:
        self.reader = KernelReader(netns=netns, all_netns=all_netns)
        # The per-child records (peer, queues, age) only a view that lists children needs;
        # the counts by state are always kept. 100k records are ~40 MB at a dump.
        self.keep_connections = keep_connections
        self.bpf = bpf
        self.owners = owners or OwnerMap()
        self.blocking_owners = blocking_owners
        self.children_every = children_every  # None: adapt to the cost of the dump
        self.prev: RawTick | None = None
        self.prev_bpf: dict[ListenerKey, BpfListenerCounts] = {}
        self.drops_base: dict[ListenerKey, int] | None = None  # sk_drops when BPF went live
        self.counts_base: dict[ListenerKey, BpfListenerCounts] = {}  # BPF counts at that moment
        self.reqq_base: dict[int, int] = {}
        self.last_children = float("-inf")
        self.children_cost = 0.0
        self._prev_overflows: dict[ListenerKey, int] = {}
        self._prev_drops: dict[ListenerKey, int] = {}
        # key -> (row, owner, syn_queue, children, BPF fields, Listener) of the last tick
        self._prev_listeners: dict[ListenerKey, tuple] = {}
        self._prev_cw: dict[tuple[int, int], tuple] = {}
        # Children by state between full dumps: the last dump's counts.
        self._last_children_counts: dict[ListenerKey, dict[str, int]] | None = None
        # BPF per-(netns, port) child state deltas as they were at the last full dump.
        self._deltas_at_dump: dict[tuple[int, int], dict[str, int]] = {}
        self.seq = 0
        self.kernel = os.uname().release
        self.hostname = socket.gethostname()

    def close(self) -> None:
        self.reader.close()

    # -- scheduling of the expensive children dump
    def _children_due(self, now: float, interval: float) -> bool:
        period = self.children_every
        if period is None:
            # Keep the full dump under ~2% of one core: a 300 ms dump runs every 15 s.
            period = min(30.0, max(interval, self.children_cost * 50))
        return now - self.last_children >= period

    def sample(self, interval: float = 1.0, *, children: bool | None = None) -> Snapshot:
        """One tick. The cyclic GC is held off meanwhile: a tick allocates a short-lived
        object per socket, which would set off collections that walk every long-lived
        object of the process (the row caches, the UI's tables) several times per tick."""
        with lifecycle.gc_held():
            return self._sample(interval, children)

    def _sample(self, interval: float, children: bool | None) -> Snapshot:
        now = time.monotonic()
        if children is None:
            # The first tick of a live view shows listeners at once; the full child dump
            # (hundreds of ms on a big host) comes with the second.
            children = self.prev is not None and self._children_due(now, interval)
        start = time.perf_counter()
        raw = self.reader.read(children=children)
        if children:
            self.last_children = now
            self.children_cost = time.perf_counter() - start
        bpf_reading: BpfReading | None = None
        bpf_state = "off"
        bpf_error: str | None = None
        if self.bpf is not None:
            bpf_state = self.bpf.state
            bpf_error = self.bpf.error
            if bpf_state == "live":
                try:
                    bpf_reading = self.bpf.read()
                except Exception as exc:  # a failed map read must not take the view down
                    bpf_error = f"BPF read failed: {exc}"
                    bpf_state = "off"
        snap = self._build(raw, bpf_reading, bpf_state, bpf_error)
        self.prev = raw
        return snap

    def _build(
        self, raw: RawTick, bpf: BpfReading | None, bpf_state: str, bpf_error: str | None
    ) -> Snapshot:
        prev = self.prev
        dt = (raw.mono - prev.mono) if prev else 0.0
        prev_drops = self._prev_drops
        prev_counters: dict[int, dict[str, int]] = {}
        if prev:
            for ns in prev.netns.values():
                prev_counters[ns.inode] = ns.counters

        # Listeners first; then request socks, CLOSE_WAIT and children attributed to them.
        listen_rows: list[tuple[ListenerKey, DiagRow]] = []
        for ns in raw.netns.values():
            for row in ns.rows:
                if row.state == diagmod.TCP_LISTEN:
                    listen_rows.append((_key(ns.inode, row), row))
        index = _listener_index(listen_rows)
        syn_queue: dict[ListenerKey, int] = {}
        children: dict[ListenerKey, dict[str, int]] = {}
        conns: dict[ListenerKey, list[Connection]] | None = None
        cw_rows: list[tuple[int, DiagRow]] = []
        for ns in raw.netns.values():
            for row in ns.rows:
                fam = FAMILY[row.family]
                if row.state in (diagmod.TCP_SYN_RECV, diagmod.TCP_NEW_SYN_RECV) and row.inode == 0:
                    parent = owner_listener(index, ns.inode, fam, row.laddr, row.lport)
                    if parent is not None:
                        syn_queue[parent] = syn_queue.get(parent, 0) + 1
                elif row.state == diagmod.TCP_CLOSE_WAIT:
                    cw_rows.append((ns.inode, row))

        owners = self.owners.resolve(
            [row.inode for _, row in listen_rows] + [row.inode for _, row in cw_rows],
            force=self.blocking_owners,
        )
        if self.owners.permission_denied:
            raw.notes.append(
                f"owners of sockets in {self.owners.permission_denied} processes unknown: reading "
                "another user's /proc/PID/fd needs root (CAP_SYS_PTRACE)"
            )
        bpf_live = bpf is not None
        # Every socket the last /proc walk saw; a child still queued (inode 0) will belong
        # to its listener's process.
        known_owners = self.owners.by_inode
        listen_inode = {key: row.inode for key, row in listen_rows}

        def parent_owner(parent: ListenerKey) -> tuple[int, str] | None:
            return known_owners.get(listen_inode.get(parent, 0))
        for ns in raw.netns.values():
            if ns.children is None:
                continue
            if conns is None:
                conns = {}
            for row in ns.children:
                fam = FAMILY[row.family]
                parent = owner_listener(index, ns.inode, fam, row.laddr, row.lport)
                if parent is None:
                    continue
                state = model.state_name(row.state)
                by_state = children.setdefault(parent, {})
                by_state[state] = by_state.get(state, 0) + 1
                if not self.keep_connections:
                    continue
                age = None
                if bpf_live and self.bpf is not None:
                    since = self.bpf.state_since(ns.inode, fam, row.laddr, row.lport, row.raddr, row.rport)
                    if since is not None and since[0] == state:
                        age = max(0.0, raw.wall - since[1])
                owner = known_owners.get(row.inode) if row.inode else parent_owner(parent)
                conns.setdefault(parent, []).append(
                    Connection(
                        ns.inode, fam, state, row.laddr, row.lport, row.raddr, row.rport,
                        row.inode, row.cookie, row.rqueue, row.wqueue,
                        owner[0] if owner else None, owner[1] if owner else None, age_s=age,
                    )
                )
        deltas_fn = getattr(self.bpf, "child_deltas", None) if bpf is not None else None
        deltas_now = deltas_fn() if callable(deltas_fn) else None
        if conns is not None:
            self._last_children_counts = children
            self._deltas_at_dump = deltas_now or {}
        elif self._last_children_counts is not None:
            children = children_between_dumps(
                self._last_children_counts, self._deltas_at_dump, deltas_now, [k for k, _ in listen_rows]
            )

        # BPF: join by key (cookie) or by tuple when the kernel had no cookie yet.
        bpf_by_key: dict[ListenerKey, BpfListenerCounts] = {}
        if bpf is not None:
            tuple_map = {dataclass_replace_cookie(k): v for k, v in bpf.listeners.items()}
            for key, _row in listen_rows:
                counts = bpf.listeners.get(key) or tuple_map.get(dataclass_replace_cookie(key))
                if counts is not None:
                    bpf_by_key[key] = counts
                else:
                    bpf_by_key[key] = BpfListenerCounts()
            if self.drops_base is None:
                self.drops_base = {key: row.drops for key, row in listen_rows}
                # The probes counted from attach; sk_drops is read now: take both at this
                # moment, so the sk_drops delta and the event counts cover the same time.
                self.counts_base = dict(bpf_by_key)
                self.reqq_base = {ns.inode: ns.counters.get("TCPReqQFullDrop", 0) for ns in raw.netns.values()}

        # SYN-queue-full drops have no per-listener event: give a netns' delta to
        # its listener only when exactly one listener there has SYN-path drops.
        reqq_for: dict[ListenerKey, int] = {}
        if bpf is not None and self.drops_base is not None:
            suspects: dict[int, list[ListenerKey]] = {}
            for key, row in listen_rows:
                base = self.drops_base.get(key, 0)
                counts = counts_since(bpf_by_key[key], self.counts_base.get(key))
                if row.drops - base - 2 * counts.listen_overflow_drops - counts.other_rx_drops > 0:
                    suspects.setdefault(key.netns, []).append(key)
            for ns in raw.netns.values():
                delta = ns.counters.get("TCPReqQFullDrop", 0) - self.reqq_base.get(ns.inode, 0)
                keys = suspects.get(ns.inode, [])
                if delta > 0 and len(keys) == 1:
                    reqq_for[keys[0]] = delta
                elif delta > 0 and len(keys) > 1:
                    raw.notes.append(
                        f"netns {ns.inode}: {delta} SYN-queue-full drops cannot be told from overflows across {len(keys)} listeners"
                    )

        # CLOSE_WAIT is in every tick's dump: count it from there, not from the last full one.
        cw_now: dict[ListenerKey, int] = {}
        for ns_inode, row in cw_rows:
            parent = owner_listener(index, ns_inode, FAMILY[row.family], row.laddr, row.lport)
            if parent is not None:
                cw_now[parent] = cw_now.get(parent, 0) + 1
        if self._last_children_counts is not None:
            children = {
                key: _with_close_wait(children.get(key), cw_now.get(key, 0)) for key, _ in listen_rows
            }
        listeners: list[Listener] = []
        have_children = self._last_children_counts is not None
        reuse = self._prev_listeners
        built: dict[ListenerKey, tuple] = {}
        for key, row in listen_rows:
            drops_before = prev_drops.get(key)
            drop_rate = model.rate(row.drops, drops_before, dt) or 0.0
            owner = owners.get(row.inode)
            fields: dict[str, Any] = {}
            if bpf is not None:
                counts = bpf_by_key[key]
                base = self.drops_base.get(key, row.drops) if self.drops_base is not None else row.drops
                if self.drops_base is not None and key not in self.drops_base:
                    # Born after the probes went live: sk_drops counts from its creation,
                    # so every drop it has is one the probes could also see.
                    self.drops_base[key] = base = 0
                prev_over = self._prev_overflows.get(key)
                before = self.counts_base.get(key)
                overflows = overflows_since_live(row.drops - base, counts_since(counts, before), reqq_for.get(key, 0))
                if before is not None:  # overflows the probes saw between attach and the baseline
                    overflows += before.listen_overflow_drops + (before.syn_overflows or 0)
                if prev_over is not None and overflows < prev_over:
                    # A count never goes back: the SYN-queue-full share moved between ticks
                    # (or a third-ACK drop was seen before its second sk_drops increment).
                    overflows = prev_over
                prev_counts = self.prev_bpf.get(key)
                fields = dict(
                    overflows=overflows,
                    overflow_rate=model.rate(overflows, prev_over, dt) if prev_over is not None else 0.0,
                    synack_retrans=counts.synack_retrans if "synack_retrans" in bpf.hooks else None,
                    synack_retrans_rate=(
                        model.rate(counts.synack_retrans, prev_counts.synack_retrans if prev_counts else 0, dt)
                        if "synack_retrans" in bpf.hooks and dt > 0
                        else None
                    ),
                    queued=counts.accepts if "accepts" in bpf.hooks else None,
                    queued_rate=(
                        model.rate(counts.accepts, prev_counts.accepts if prev_counts else 0, dt)
                        if "accepts" in bpf.hooks and dt > 0
                        else None
                    ),
                    peak_accept_queue=max(counts.peak_accept_queue, row.rqueue) if "accepts" in bpf.hooks else None,
                    resets_sent=counts.resets_sent if "resets_sent" in bpf.hooks else None,
                    resets_received=counts.resets_received if "resets_received" in bpf.hooks else None,
                    drop_reasons=drop_reasons_of(counts, bpf.hooks),
                )
                self._prev_overflows[key] = overflows
            synq = syn_queue.get(key, 0)
            kids = children.get(key) if have_children else None
            values = tuple(fields.values())
            # Most listeners are the same as a tick ago: keep the same object (and skip
            # building a 20-field frozen record) when every input is unchanged.
            last = reuse.get(key)
            if (
                last is not None
                and last[0] is row
                and last[1] == owner
                and last[2] == synq
                and (last[3] is kids or last[3] == kids)
                and last[4] == values
                and last[5].drop_rate == drop_rate
            ):
                listener = last[5]
            else:
                listener = Listener(
                    key=key,
                    inode=row.inode,
                    pid=owner[0] if owner else None,
                    comm=owner[1] if owner else None,
                    accept_queue=row.rqueue,
                    backlog=row.wqueue,
                    syn_queue=synq,
                    drops=max(row.drops, 0),
                    drop_rate=drop_rate,
                    children=_with_main_states(kids) if have_children else {},
                    **fields,
                )
            built[key] = (row, owner, synq, kids, values, listener)
            listeners.append(listener)
        self._prev_listeners = built
        self._prev_drops = {key: row.drops for key, row in listen_rows}
        if bpf is not None:
            self.prev_bpf = dict(bpf_by_key)
        live_keys = {key for key, _ in listen_rows}
        for key in [k for k in self._prev_overflows if k not in live_keys]:
            del self._prev_overflows[key]
        if self.drops_base is not None and len(self.drops_base) > len(live_keys):
            self.drops_base = {k: v for k, v in self.drops_base.items() if k in live_keys}
            self.counts_base = {k: v for k, v in self.counts_base.items() if k in live_keys}

        close_wait = []
        prev_cw, cw_built = self._prev_cw, {}
        listen_row_of = dict(listen_rows)
        for ns_inode, row in cw_rows:
            fam = FAMILY[row.family]
            owner = owners.get(row.inode)
            if owner is None and row.inode == 0:
                # Still in the accept queue: nobody has it yet, but its listener's process will.
                lkey = owner_listener(index, ns_inode, fam, row.laddr, row.lport)
                lrow = listen_row_of.get(lkey) if lkey is not None else None
                owner = owners.get(lrow.inode) if lrow is not None else None
            age = None
            if bpf is not None and self.bpf is not None:
                since = self.bpf.state_since(ns_inode, fam, row.laddr, row.lport, row.raddr, row.rport)
                if since is not None and since[0] == "CLOSE_WAIT":
                    age = max(0.0, raw.wall - since[1])
            cw_id = (ns_inode, row.cookie)
            last = prev_cw.get(cw_id)
            if last is not None and last[0] is row and last[1] == owner and last[2].age_s == age:
                cw = last[2]
            else:
                cw = CloseWait(
                    ns_inode, fam, row.laddr, row.lport, row.raddr, row.rport, row.inode, row.cookie,
                    owner[0] if owner else None, owner[1] if owner else None, row.rqueue, age,
                )
            cw_built[cw_id] = (row, owner, cw)
            close_wait.append(cw)

        self._prev_cw = cw_built
        netns_out = []
        for ns in raw.netns.values():
            counters_before = prev_counters.get(ns.inode)
            rates = {}
            if counters_before is not None and dt > 0:
                for name in model.NETNS_COUNTERS + model.NETNS_EXTRA_COUNTERS:
                    r = model.rate(ns.counters.get(name), counters_before.get(name), dt)
                    if r is not None:
                        rates[name] = r
            netns_out.append(NetnsCounters(ns.inode, dict(ns.counters), rates, dict(ns.sysctls)))

        events: Sequence[Transition] = bpf.events if bpf is not None else ()
        hooks = dict(bpf.hooks) if bpf is not None else (dict(self.bpf.hooks) if self.bpf is not None else {})
        self.seq += 1
        return Snapshot(
            time=raw.wall,
            interval=round(dt, 3) if dt else 0.0,
            kernel=self.kernel,
            hostname=self.hostname,
            sources=Sources(
                netlink=raw.netlink_ok,
                bpf=bpf is not None,
                bpf_error=bpf_error,
                bpf_state=bpf_state,
                hooks=hooks,
                lost_events=bpf.lost_events if bpf is not None else 0,
                notes=(*raw.notes, *getattr(self.bpf, "notes", ())),
            ),
            netns=netns_out,
            listeners=listeners,
            close_wait=close_wait,
            events=tuple(events),
            connections=(
                {k: tuple(v) for k, v in conns.items()} if conns is not None and self.keep_connections else None
            ),
            seq=self.seq,
        )



def _with_close_wait(counts: Mapping[str, int] | None, close_wait: int) -> dict[str, int]:
    out = dict(counts) if counts else {}
    if close_wait:
        out["CLOSE_WAIT"] = close_wait
    else:
        out.pop("CLOSE_WAIT", None)
    return out


def _with_main_states(counts: Mapping[str, int] | None) -> dict[str, int]:
    """Children by state, ESTABLISHED and CLOSE_WAIT always present once a dump has counted them."""
    out = {"ESTABLISHED": 0, "CLOSE_WAIT": 0}
    if counts:
        out.update(counts)
    return out


def children_between_dumps(
    at_dump: Mapping[ListenerKey, Mapping[str, int]],
    deltas_at_dump: Mapping[tuple[int, int], Mapping[str, int]],
    deltas_now: Mapping[tuple[int, int], Mapping[str, int]] | None,
    listeners: Sequence[ListenerKey],
) -> dict[ListenerKey, dict[str, int]]:
    """Children by state between two full dumps: the last dump's counts moved on by the
    transitions BPF counted per (netns, port) since then. Where a port has several
    listeners in one netns the deltas cannot be split, and the dump's counts stand."""
    if not deltas_now:
        return {k: dict(v) for k, v in at_dump.items()}
    per_port: dict[tuple[int, int], int] = {}
    for key in listeners:
        per_port[(key.netns, key.lport)] = per_port.get((key.netns, key.lport), 0) + 1
    out: dict[ListenerKey, dict[str, int]] = {}
    for key in listeners:
        counts = dict(at_dump.get(key, {}))
        port = (key.netns, key.lport)
        if per_port[port] == 1:
            now, then = deltas_now.get(port, {}), deltas_at_dump.get(port, {})
            for state in set(now) | set(then):
                value = counts.get(state, 0) + now.get(state, 0) - then.get(state, 0)
                if value > 0:
                    counts[state] = value
                else:
                    counts.pop(state, None)
        out[key] = counts
    return out


def dataclass_replace_cookie(key: ListenerKey) -> ListenerKey:
    return ListenerKey(key.netns, key.family, key.laddr, key.lport, 0)


def _key(netns: int, row: DiagRow) -> ListenerKey:
    return ListenerKey(netns, FAMILY[row.family], row.laddr, row.lport, row.cookie)
