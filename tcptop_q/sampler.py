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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from . import attribution, lifecycle, model, reuseport
from .accepts import AcceptTracker
from .attribution import listener_index, owner_listener
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
from .probes.names import NetnsName, NetnsNamer
from .probes.netns import NetnsEnterer, NetnsRef, discover
from .probes.netstat import NetnsFiles
from .probes.owners import OwnerMap
from .probes.synq import BY_ADDRESS_NOTE, Walk

T = TypeVar("T")

FAMILY: dict[int, str] = {int(socket.AF_INET): "ipv4", int(socket.AF_INET6): "ipv6"}


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

    def run_in(self, netns: int, fn: Callable[[], T]) -> T:
        """fn() inside `netns` on this thread (OSError if that netns is not known or gone)."""
        ref = self.refs.get(netns)
        if ref is None:
            raise OSError(f"netns {netns} not known")
        return self.enterer.run_in(ref, fn)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()
        self.enterer.close()


# ----------------------------------------------------------------- attribution

# Kept under their old names: tests and callers import them from here.
_listener_index = listener_index


@dataclass
class Attributed:
    """One tick's sockets, each given to the listener it belongs to. Decided here, once:
    the screens, the diagnosis and the feed read `CloseWait.listener` / `Connection.listener`."""

    listen_rows: list[tuple[ListenerKey, DiagRow]]
    index: dict[tuple[int, int, str], ListenerKey]
    syn_queue: dict[ListenerKey, int]
    close_wait: list[tuple[int, DiagRow, ListenerKey | None]]
    children: list[tuple[int, DiagRow, ListenerKey]] | None  # None: no full dump this tick
    syn_recv: dict[ListenerKey, int] = field(default_factory=dict)  # every SYN_RECV row (Fast Open children too)
    parents: _Parents | None = None
    # Some address has several listeners and their SYN queues were counted by address this tick
    # (no tcp iterator walk of that netns): the sampler notes it (probes/synq.py BY_ADDRESS_NOTE).
    synq_by_address: bool = False

    def close_wait_counts(self) -> dict[ListenerKey, int]:
        out: dict[ListenerKey, int] = {}
        for _, _, parent in self.close_wait:
            if parent is not None:
                out[parent] = out.get(parent, 0) + 1
        return out

    def children_counts(self) -> dict[ListenerKey, dict[str, int]] | None:
        """Children by state from this tick's full dump (None: no dump this tick)."""
        if self.children is None:
            return None
        out: dict[ListenerKey, dict[str, int]] = {}
        for _, row, parent in self.children:
            by_state = out.setdefault(parent, {})
            state = model.state_name(row.state)
            by_state[state] = by_state.get(state, 0) + 1
        return out


Links = tuple[Mapping[tuple[int, str, str, int, str, int], tuple[int, int]], Mapping[int, tuple[int, int]]]


def shared_addresses(listen_rows: Sequence[tuple[ListenerKey, DiagRow]]) -> set[tuple[int, int, str]]:
    """(netns, lport, laddr) of every address more than one listener has (SO_REUSEPORT groups):
    there the address does not tell a child's listener."""
    seen: set[tuple[int, int, str]] = set()
    shared: set[tuple[int, int, str]] = set()
    for key, _ in listen_rows:
        where = (key.netns, key.lport, key.laddr)
        (shared if where in seen else seen).add(where)
    return shared


class _Parents:
    """A socket's listener: by address (attribution.owner_listener), and where several listeners
    share that address, by the link the probes took in the kernel when the child was queued
    (BpfProbes.child_links, read once per tick and only then). A child without a link (queued
    before the probes went live) stays with the address's first listener."""

    def __init__(self, listen_rows: Sequence[tuple[ListenerKey, DiagRow]],
                 links: Callable[[], Links] | None) -> None:
        self.index = listener_index(listen_rows)
        self.shared = shared_addresses(listen_rows) if links is not None else set()
        self.by_lid = {(key.netns, row.inode): key for key, row in listen_rows if row.inode}
        self._links = links
        self._read: Links | None = None

    def links(self) -> Links:
        if self._read is None:
            self._read = self._links() if self._links is not None else ({}, {})
        return self._read

    def of(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> ListenerKey | None:
        key = owner_listener(self.index, netns, family, laddr, lport)
        if key is None or (key.netns, key.lport, key.laddr) not in self.shared:
            return key
        lid = self.links()[0].get((netns, family, laddr, lport, raddr, rport))
        return self.by_lid.get(lid, key) if lid is not None else key

    def event(self, ev: Transition) -> Transition:
        key = ev.listener
        if key is None or (key.netns, key.lport, key.laddr) not in self.shared:
            return ev
        lid = self.links()[1].get(ev.skaddr)
        member = self.by_lid.get(lid) if lid is not None else None
        return ev if member is None or member == key else dataclasses.replace(ev, listener=member)


Walks = Callable[[set[int]], Mapping[int, Walk]]


def attribute(raw: RawTick, links: Callable[[], Links] | None = None, walks: Walks | None = None) -> Attributed:
    """Listeners first; then request socks, CLOSE_WAIT and children given to them. `links`:
    the probes' child -> listener links, asked for only where an address has several listeners.
    `walks`: the tcp iterator's walks of the given namespaces (probes/synq.py), asked for only
    those where an address has several listeners: there each member's SYN queue and SYN_RECV
    children are the requests that name it as their listener, by socket cookie."""
    listen_rows = [
        (_key(ns.inode, row), row) for ns in raw.netns.values() for row in ns.rows if row.state == diagmod.TCP_LISTEN
    ]
    parents = _Parents(listen_rows, links)
    index = parents.index
    shared = shared_addresses(listen_rows)
    walked: Mapping[int, Walk] = {}
    if shared and walks is not None:
        walked = walks({netns for netns, _port, _addr in shared})
    by_cookie = {(key.netns, key.cookie): key for key, _row in listen_rows} if walked else {}
    syn_queue: dict[ListenerKey, int] = {}
    syn_recv: dict[ListenerKey, int] = {}
    close_wait: list[tuple[int, DiagRow, ListenerKey | None]] = []
    children: list[tuple[int, DiagRow, ListenerKey]] | None = None
    for ns in raw.netns.values():
        for row in ns.rows:
            if row.state in (diagmod.TCP_SYN_RECV, diagmod.TCP_NEW_SYN_RECV):
                # Request socks are not sockets the probes see: by address, or by the walk.
                parent = owner_listener(index, ns.inode, FAMILY[row.family], row.laddr, row.lport)
                if parent is not None and ns.inode in walked and (parent.netns, parent.lport, parent.laddr) in shared:
                    continue  # counted from the walk below
                if parent is not None:
                    syn_recv[parent] = syn_recv.get(parent, 0) + 1
                    if row.inode == 0:
                        syn_queue[parent] = syn_queue.get(parent, 0) + 1
            elif row.state == diagmod.TCP_CLOSE_WAIT:
                close_wait.append((ns.inode, row, parents.of(ns.inode, FAMILY[row.family], row.laddr, row.lport,
                                                             row.raddr, row.rport)))
        if ns.children is None:
            continue
        if children is None:
            children = []
        walk = walked.get(ns.inode)
        for row in ns.children:
            parent = parents.of(ns.inode, FAMILY[row.family], row.laddr, row.lport, row.raddr, row.rport)
            if (walk is not None and parent is not None and row.state == diagmod.TCP_SYN_RECV
                    and (parent.netns, parent.lport, parent.laddr) in shared):
                # A request (or Fast Open child) row: to the member the walk saw it wait on.
                cookie = walk.peers.get((row.family, row.raddr, row.rport))
                parent = by_cookie.get((ns.inode, cookie), parent) if cookie else parent
            if parent is not None:
                children.append((ns.inode, row, parent))
    for key, _row in listen_rows:
        walk = walked.get(key.netns)
        if walk is None or (key.netns, key.lport, key.laddr) not in shared:
            continue
        # A member's requests (NEW_SYN_RECV naming it as rsk_listener) are its SYN queue; with
        # its Fast Open children still in SYN_RECV they are its SYN_RECV children. Requests of
        # a listener missing from this dump (opened or closed since) are counted nowhere.
        reqs = walk.requests.get(key.cookie, 0)
        recv = reqs + walk.fastopen.get(key.cookie, 0)
        if reqs:
            syn_queue[key] = reqs
        if recv:
            syn_recv[key] = recv
    by_address = bool(shared) and any(netns not in walked for netns, _p, _a in shared)
    return Attributed(listen_rows, index, syn_queue, close_wait, children, syn_recv, parents, by_address)


# ------------------------------------------------------------------ overflows


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


def _share(avail: int, bounds: Mapping[ListenerKey, int]) -> tuple[dict[ListenerKey, int], bool]:
    """`avail` overflows of one netns that no event counted, given to the listeners whose sk_drops
    grew by more than their counted overflows explain (`bounds`: at most that many each, since
    every overflow adds at least 1 to its listener's sk_drops). Exact when one listener is a
    candidate, or when the candidates' bounds add up to no more than `avail`; else split in
    proportion, and the second value says so."""
    cands = {k: b for k, b in bounds.items() if b > 0}
    if avail <= 0 or not cands:
        return {}, False
    total = sum(cands.values())
    if total <= avail:
        return dict(cands), False
    if len(cands) == 1:
        ((k, _b),) = cands.items()
        return {k: avail}, False
    return {k: avail * b // total for k, b in cands.items()}, True


class OverflowTracker:
    """Owns every overflow baseline and the last count shown per listener (it never goes back).

    Per listener, the overflows the probes count one by one (third-ACK overflows, reason
    TCP_LISTEN_OVERFLOW; SYN-path ones where a kprobe sees them), plus its share of the rest
    of its netns' ListenOverflows growth: SYN-path overflows (the SYN is consumed, no event)
    and cookie-path third-ACK overflows (tcp_syncookies). Drops that are not overflows (a SYN
    queue more than 3/4 full without syncookies, SYN queue full, TCP_DEFER_ACCEPT bare ACKs,
    filters) raise sk_drops and ListenDrops but never ListenOverflows, so they are never
    taken for overflows. docs/JSON.md, "How `overflows` is derived"."""

    def __init__(self) -> None:
        self.drops_base: dict[ListenerKey, int] | None = None  # sk_drops at each listener's baseline
        self.counts_base: dict[ListenerKey, BpfListenerCounts] = {}  # BPF counts at that moment
        self.lo_base: dict[int, int] = {}  # ListenOverflows of each netns at its first sample
        self.lo_last: dict[int, int] = {}  # ... at the previous sample
        self.gone: dict[int, int] = {}  # netns -> overflows charged to its listeners that are gone
        self.charged: dict[ListenerKey, int] = {}  # overflows since its baseline charged to each (last tick)
        self.share: dict[ListenerKey, int] = {}  # of those, the netns remainder given to each so far
        self.last: dict[ListenerKey, int] = {}  # the overflows of the previous tick

    def update(
        self,
        listen_rows: Sequence[tuple[ListenerKey, DiagRow]],
        counts: Mapping[ListenerKey, BpfListenerCounts],
        lo_now: Mapping[int, int],
        dt: float,
        notes: list[str],
    ) -> dict[ListenerKey, tuple[int, float | None]]:
        """(overflows, overflow_rate) per listener. `lo_now`: netns -> ListenOverflows (TcpExt)."""
        first = self.drops_base is None
        if self.drops_base is None:
            self.drops_base = {}
        for netns in [n for n in self.lo_base if n not in lo_now]:  # gone (or unreadable): forget it
            self.lo_base.pop(netns)
            self.gone.pop(netns, None)
        for netns, value in lo_now.items():
            if value < self.lo_last.get(netns, 0):
                # The counter went back: a new netns under a reused inode number (the kernel
                # reuses them), created after live; its counter started at 0.
                self.lo_base[netns] = 0
                self.gone.pop(netns, None)
        self.lo_last = dict(lo_now)
        new_ns = set(lo_now) - set(self.lo_base)
        for netns in new_ns:
            self.lo_base[netns] = lo_now[netns]
        for key, row in listen_rows:
            if key in self.drops_base:
                continue
            if first or key.netns in new_ns:
                # The probes counted from attach; sk_drops and ListenOverflows are read now:
                # take all at this moment, so the deltas cover the same time.
                self.drops_base[key] = row.drops
                self.counts_base[key] = counts[key]
            else:
                # Born after the probes went live: sk_drops counts from its creation, so every
                # drop it has is one the probes (and the netns counters since) could also see.
                self.drops_base[key] = 0
        exact: dict[ListenerKey, int] = {}
        bounds: dict[int, dict[ListenerKey, int]] = {}
        for key, row in listen_rows:
            since = counts_since(counts[key], self.counts_base.get(key))
            third = since.listen_overflow_drops
            exact[key] = third + (since.syn_overflows or 0)
            if since.syn_overflows is None:
                # A third-ACK overflow adds 2 to sk_drops (tcp_listendrop, then the discard).
                bounds.setdefault(key.netns, {})[key] = row.drops - self.drops_base[key] - 2 * third
        shares = self.share
        for netns, per in bounds.items():
            if netns not in lo_now:  # no TcpExt counters: every unexplained drop may be one
                shares.update({k: max(shares.get(k, 0), b) for k, b in per.items()})
                continue
            counted = sum(exact[k] + shares.get(k, 0) for k in exact if k.netns == netns)
            # What no listener has been given yet; it goes only to sk_drops not explained yet
            # (a listener keeps what it was given: an earlier overflow is never re-shared).
            avail = lo_now[netns] - self.lo_base[netns] - counted - self.gone.get(netns, 0)
            got, split = _share(avail, {k: b - shares.get(k, 0) for k, b in per.items()})
            for k, n in got.items():
                shares[k] = shares.get(k, 0) + n
            if split:
                notes.append(f"netns {netns}: {avail} overflows without an event of their own cannot be told apart "
                             f"from other drops across {len(got)} listeners: shared in proportion to their sk_drops")
        out: dict[ListenerKey, tuple[int, float | None]] = {}
        for key, _row in listen_rows:
            self.charged[key] = exact[key] + shares.get(key, 0)
            overflows = self.charged[key]
            before = self.counts_base.get(key)
            if before is not None:  # overflows the probes saw between attach and the baseline
                overflows += before.listen_overflow_drops + (before.syn_overflows or 0)
            prev = self.last.get(key)
            if prev is not None and overflows < prev:
                # A count never goes back: a share moved between ticks (or a third-ACK drop
                # was seen before its second sk_drops increment).
                overflows = prev
            out[key] = (overflows, model.rate(overflows, prev, dt) if prev is not None else 0.0)
            self.last[key] = overflows
        return out

    def prune(self, live: set[ListenerKey]) -> None:
        """Forget listeners that are gone (a listener re-created under a key starts over); what was
        charged to them stays charged: it is not another listener's."""
        for key in [k for k in self.charged if k not in live]:
            self.gone[key.netns] = self.gone.get(key.netns, 0) + self.charged.pop(key)
            self.share.pop(key, None)
        for key in [k for k in self.last if k not in live]:
            del self.last[key]
        if self.drops_base is not None and len(self.drops_base) > len(live):
            self.drops_base = {k: v for k, v in self.drops_base.items() if k in live}
            self.counts_base = {k: v for k, v in self.counts_base.items() if k in live}


# ------------------------------------------------------------------- children


def _with_close_wait(counts: Mapping[str, int] | None, close_wait: int) -> dict[str, int]:
    out = dict(counts) if counts else {}
    if close_wait:
        out["CLOSE_WAIT"] = close_wait
    else:
        out.pop("CLOSE_WAIT", None)
    return out


def with_tick_syn_recv(
    children: Mapping[ListenerKey, Mapping[str, int]], syn_recv: Mapping[ListenerKey, int]
) -> dict[ListenerKey, dict[str, int]]:
    """Children in SYN_RECV from this tick's dump, never from the last full one.

    Request sockets fire no state events (docs/JSON.md, children): a count carried from a
    full dump would never go down (TCP_DEFER_ACCEPT keeps them until data arrives, then
    the child appears as ESTABLISHED), and new ones would never show. The per-tick dump
    has every SYN_RECV row already (the SYN queue is counted from it)."""
    out: dict[ListenerKey, dict[str, int]] = {}
    for key, counts in children.items():
        by_state = dict(counts)
        n = syn_recv.get(key, 0)
        if n:
            by_state["SYN_RECV"] = n
        else:
            by_state.pop("SYN_RECV", None)
        out[key] = by_state
    return out


def _with_main_states(counts: Mapping[str, int] | None) -> dict[str, int]:
    """Children by state, ESTABLISHED and CLOSE_WAIT always present once a dump has counted them."""
    out = {"ESTABLISHED": 0, "CLOSE_WAIT": 0}
    if counts:
        out.update(counts)
    return out


Deltas = Mapping[tuple[int, int], Mapping[str, int]]


def _moved(counts: dict[str, int], now: Mapping[str, int], then: Mapping[str, int]) -> None:
    for state in set(now) | set(then):
        value = counts.get(state, 0) + now.get(state, 0) - then.get(state, 0)
        if value > 0:
            counts[state] = value
        else:
            counts.pop(state, None)


def children_between_dumps(
    at_dump: Mapping[ListenerKey, Mapping[str, int]],
    deltas_at_dump: Deltas,
    deltas_now: Deltas | None,
    listeners: Sequence[ListenerKey],
    ldeltas_at_dump: Deltas | None = None,
    ldeltas_now: Deltas | None = None,
    lids: Mapping[ListenerKey, tuple[int, int]] | None = None,
) -> dict[ListenerKey, dict[str, int]]:
    """Children by state between two full dumps: the last dump's counts moved on by the
    transitions BPF counted since then: per listener (netns, inode) for children queued on it
    (`ldeltas`, the kernel's link), per (netns, port) for those not queued yet. Where a port has
    several listeners in one netns the per-port deltas cannot be split: those stand still."""
    if not deltas_now and not ldeltas_now:
        return {k: dict(v) for k, v in at_dump.items()}
    deltas_now = deltas_now or {}
    per_port: dict[tuple[int, int], int] = {}
    for key in listeners:
        per_port[(key.netns, key.lport)] = per_port.get((key.netns, key.lport), 0) + 1
    out: dict[ListenerKey, dict[str, int]] = {}
    empty: Mapping[str, int] = {}
    for key in listeners:
        counts = dict(at_dump.get(key, {}))
        port = (key.netns, key.lport)
        if per_port[port] == 1 and deltas_now:
            _moved(counts, deltas_now.get(port, empty), deltas_at_dump.get(port, empty))
        lid = lids.get(key) if lids else None
        if lid is not None and ldeltas_now:
            _moved(counts, ldeltas_now.get(lid, empty), (ldeltas_at_dump or {}).get(lid, empty))
        out[key] = counts
    return out


class ChildrenTracker:
    """Children by state per listener between full dumps: the last dump's counts, moved on
    by BPF's per-listener and per-port transition deltas; CLOSE_WAIT always from this tick's dump."""

    def __init__(self) -> None:
        self.at_dump: dict[ListenerKey, dict[str, int]] | None = None  # None: no dump yet
        self.deltas_at_dump: Deltas = {}
        self.ldeltas_at_dump: Deltas = {}

    def update(
        self,
        dumped: dict[ListenerKey, dict[str, int]] | None,
        deltas_now: Deltas | None,
        listeners: Sequence[ListenerKey],
        close_wait: Mapping[ListenerKey, int],
        ldeltas_now: Deltas | None = None,
        lids: Mapping[ListenerKey, tuple[int, int]] | None = None,
    ) -> dict[ListenerKey, dict[str, int]] | None:
        """Counts per listener this tick; None until the first full dump."""
        if dumped is not None:
            self.at_dump = dumped
            self.deltas_at_dump = deltas_now or {}
            self.ldeltas_at_dump = ldeltas_now or {}
            counts: Mapping[ListenerKey, Mapping[str, int]] = dumped
        elif self.at_dump is None:
            return None
        else:
            counts = children_between_dumps(self.at_dump, self.deltas_at_dump, deltas_now, listeners,
                                            self.ldeltas_at_dump, ldeltas_now, lids)
        return {key: _with_close_wait(counts.get(key), close_wait.get(key, 0)) for key in listeners}


# ---------------------------------------------------------------- BPF fields


@dataclass(frozen=True, slots=True)
class FieldInput:
    """What a BPF-derived Listener field may read: this tick's and the last tick's counts."""

    counts: BpfListenerCounts
    prev: BpfListenerCounts | None  # None: first tick this listener had counts
    hooks: Mapping[str, str]  # metric -> hook serving it (absent: not served, field None)
    row: DiagRow
    dt: float


FieldFn = Callable[[FieldInput], dict[str, Any]]


def counter_field(name: str, hook: str, attr: str | None = None) -> FieldFn:
    """`name` (cumulative since live) and `name_rate` from BpfListenerCounts.`attr`;
    both None when no hook serves `hook` (unknown is never 0)."""
    attr = attr or name

    def fields(inp: FieldInput) -> dict[str, Any]:
        if hook not in inp.hooks:
            return {name: None, f"{name}_rate": None}
        now = getattr(inp.counts, attr)
        before = getattr(inp.prev, attr) if inp.prev is not None else 0
        return {name: now, f"{name}_rate": model.rate(now, before, inp.dt) if inp.dt > 0 else None}

    return fields


def _peak_accept_queue(inp: FieldInput) -> dict[str, Any]:
    if "queued" not in inp.hooks:
        return {"peak_accept_queue": None}
    return {"peak_accept_queue": max(inp.counts.peak_accept_queue, inp.row.rqueue)}


def _resets(inp: FieldInput) -> dict[str, Any]:
    return {
        "resets_sent": inp.counts.resets_sent if "resets_sent" in inp.hooks else None,
        "resets_received": inp.counts.resets_received if "resets_received" in inp.hooks else None,
    }


def _drop_reasons(inp: FieldInput) -> dict[str, Any]:
    """kfree_skb drop reasons charged to the listener since the probes went live (reason name
    -> count); None where no drop hook is attached (unknown, never "no drops")."""
    if "drop_reasons" not in inp.hooks:
        return {"drop_reasons": None}
    return {"drop_reasons": {name: n for name, n in inp.counts.drop_reasons.items() if n}}


# One function per group of Listener fields the probes fill: adding a BPF metric is a
# model.Listener field, a BpfListenerCounts field and one function here.
LISTENER_BPF_FIELDS: list[FieldFn] = [
    counter_field("synack_retrans", "synack_retrans"),
    counter_field("queued", "queued"),
    # accepted, accept_wait (+ recent window), handshake: AcceptTracker (tcptop_q/accepts.py),
    # applied to the built snapshot: the recent window needs a few ticks of history.
    _peak_accept_queue,
    _resets,
    _drop_reasons,
]


def join_bpf(
    bpf: BpfReading,
    listen_rows: Sequence[tuple[ListenerKey, DiagRow]],
    prev: Mapping[ListenerKey, BpfListenerCounts] | None = None,
) -> dict[ListenerKey, BpfListenerCounts]:
    """BPF counts per listener row: by key (the socket cookie), else by the socket's inode (an
    entry the probes made before the kernel had a cookie, e.g. reuseport members opened after
    start), else by address for an entry without a cookie when it is the only one there (no
    inode in BTF). Never one socket's counts on another's row (docs/ARCHITECTURE.md, identity).
    A row whose entry is gone although the last tick had one (the socket closed between the
    dump and the map read) keeps its last counts (`prev`): a count never goes back."""
    tuple_map = {dataclass_replace_cookie(k): v for k, v in bpf.listeners.items() if not k.cookie}
    by_inode = bpf.by_inode
    out: dict[ListenerKey, BpfListenerCounts] = {}
    for key, row in listen_rows:
        counts = bpf.listeners.get(key)
        if counts is None and row.inode:
            counts = by_inode.get((key.netns, row.inode))
        if counts is None and not by_inode:
            counts = tuple_map.get(dataclass_replace_cookie(key))
        if counts is None and prev is not None:
            counts = prev.get(key)
        out[key] = counts if counts is not None else BpfListenerCounts()
    return out


# --------------------------------------------------------------- reuse, netns

V = TypeVar("V")


class ReuseCache(Generic[V]):
    """Last tick's objects by id: most sockets are the same as a tick ago, so keep the
    same frozen object (and skip building it) when every input is unchanged."""

    def __init__(self) -> None:
        self.prev: dict[Any, tuple[tuple, V]] = {}
        self.now: dict[Any, tuple[tuple, V]] = {}

    def get(self, ident: Any, inputs: tuple, make: Callable[[], V]) -> V:
        last = self.prev.get(ident)
        if last is not None and _same(last[0], inputs):
            obj = last[1]
        else:
            obj = make()
        self.now[ident] = (inputs, obj)
        return obj

    def end_tick(self) -> None:
        self.prev, self.now = self.now, {}


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


def netns_counters(
    raw: RawTick, prev: RawTick | None, dt: float, names: Mapping[int, NetnsName] | None = None
) -> list[NetnsCounters]:
    """Each netns' TcpExt counters, per-second rates over the tick, sysctls, name (probes/names.py)."""
    names = names or {}
    before_of = {ns.inode: ns.counters for ns in prev.netns.values()} if prev else {}
    out = []
    for ns in raw.netns.values():
        before = before_of.get(ns.inode)
        rates = {}
        if before is not None and dt > 0:
            for name in model.NETNS_COUNTERS + model.NETNS_EXTRA_COUNTERS:
                r = model.rate(ns.counters.get(name), before.get(name), dt)
                if r is not None:
                    rates[name] = r
        named = names.get(ns.inode)
        out.append(NetnsCounters(ns.inode, dict(ns.counters), rates, dict(ns.sysctls),
                                 named.name if named else None, named.source if named else None))
    return out


# ---------------------------------------------------------------------- sampler

Owner = tuple[int, str] | None


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
        self.accepts = AcceptTracker()  # accepted, accept_wait, handshake (tcptop_q/accepts.py)
        self.owners = owners or OwnerMap()
        self.blocking_owners = blocking_owners
        self.children_every = children_every  # None: adapt to the cost of the dump
        self.prev: RawTick | None = None
        self.prev_bpf: dict[ListenerKey, BpfListenerCounts] = {}
        self.overflows = OverflowTracker()
        self.children = ChildrenTracker()
        self.last_children = float("-inf")
        self.children_cost = 0.0
        self._prev_drops: dict[ListenerKey, int] = {}
        self._listeners: ReuseCache[Listener] = ReuseCache()
        self._close_wait: ReuseCache[CloseWait] = ReuseCache()
        self.seq = 0
        self.namer: NetnsNamer | None = None
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
        snap = self.accepts.apply(self._build(raw, bpf_reading, bpf_state, bpf_error), bpf_reading, self.bpf,
                                  self.prev_bpf if bpf_reading is not None else None)
        self.prev = raw
        return snap

    def _build(
        self, raw: RawTick, bpf: BpfReading | None, bpf_state: str, bpf_error: str | None
    ) -> Snapshot:
        dt = (raw.mono - self.prev.mono) if self.prev else 0.0
        links_fn = getattr(self.bpf, "child_links", None) if bpf is not None else None
        att = attribute(raw, links_fn if callable(links_fn) else None, self._walks)
        if att.synq_by_address:
            raw.notes.append(f"{BY_ADDRESS_NOTE}: {self._synq_reason()}")
        owners = self._resolve_owners(att, raw.notes)
        keys = [key for key, _ in att.listen_rows]
        conns = self._connections(att, raw.wall, owners, bpf is not None)
        deltas_fn = getattr(self.bpf, "child_deltas", None) if bpf is not None else None
        deltas_now = deltas_fn() if callable(deltas_fn) else None
        ldeltas_fn = getattr(self.bpf, "listener_child_deltas", None) if bpf is not None else None
        ldeltas_now = ldeltas_fn() if callable(ldeltas_fn) else None
        lids = {key: (key.netns, row.inode) for key, row in att.listen_rows if row.inode}
        children = self.children.update(att.children_counts(), deltas_now, keys, att.close_wait_counts(),
                                        ldeltas_now, lids)
        if children is not None:
            children = with_tick_syn_recv(children, att.syn_recv)
        fields = self._bpf_fields(att, bpf, dt, raw)
        listeners = self._listeners_of(att, owners, children, fields, dt)
        close_wait = self._close_waits(att, owners, raw.wall, bpf is not None)
        names = self._netns_names(raw)  # before _sources: its notes join the tick's
        self.seq += 1
        return Snapshot(
            time=raw.wall,
            interval=round(dt, 3) if dt else 0.0,
            kernel=self.kernel,
            hostname=self.hostname,
            sources=self._sources(raw, bpf, bpf_state, bpf_error),
            netns=netns_counters(raw, self.prev, dt, names),
            listeners=listeners,
            close_wait=close_wait,
            events=self._events(att, bpf),
            connections=conns,
            seq=self.seq,
        )

    def _walks(self, netns: set[int]) -> dict[int, Walk]:
        """The tcp iterator walked inside each of `netns` (probes/synq.py); a netns it could not
        walk is left out (its SYN queues stay by address, with the note)."""
        walk_fn = getattr(self.bpf, "synq_walk", None)
        if not callable(walk_fn) or getattr(self.bpf, "state", None) != "live":
            return {}
        out: dict[int, Walk] = {}
        for ino in sorted(netns):
            try:
                walk = self.reader.run_in(ino, walk_fn)
            except OSError:
                continue  # the netns went away since the dump
            if walk is None:
                break  # not loaded, or refused: the same for every netns
            out[ino] = walk
        return out

    def _synq_reason(self) -> str:
        if self.bpf is None:
            return "BPF probes off"
        if getattr(self.bpf, "state", None) != "live":
            return f"BPF probes {self.bpf.state}" + (f" ({self.bpf.error})" if self.bpf.error else "")
        return getattr(self.bpf, "synq_error", None) or "netns not walked"

    def _events(self, att: Attributed, bpf: BpfReading | None) -> tuple[Transition, ...]:
        """Feed events, each with its listener: by address, by the kernel's link where several
        listeners share the address (a reuseport member's children, timelines, `ms in old`)."""
        if bpf is None:
            return ()
        events = attribution.attribute_events(bpf.events, att.index)
        parents = att.parents
        if parents is None or not parents.shared:
            return events
        return tuple(parents.event(ev) for ev in events)

    def _netns_names(self, raw: RawTick) -> dict[int, NetnsName]:
        """Names of this tick's namespaces (probes/names.py, cached there); its notes join the tick's."""
        if self.namer is None:
            self.namer = NetnsNamer()
        refs = self.reader.refs
        names = self.namer.names({ino: refs[ino].pids if ino in refs else () for ino in raw.netns})
        raw.notes.extend(self.namer.notes)
        return names

    def _resolve_owners(self, att: Attributed, notes: list[str]) -> Mapping[int, tuple[int, str]]:
        owners = self.owners.resolve(
            [row.inode for _, row in att.listen_rows] + [row.inode for _, row, _ in att.close_wait],
            force=self.blocking_owners,
        )
        if self.owners.permission_denied:
            notes.append(
                f"owners of sockets in {self.owners.permission_denied} processes unknown: reading "
                "another user's /proc/PID/fd needs root (CAP_SYS_PTRACE)"
            )
        return owners

    def _age(self, netns: int, fam: str, row: DiagRow, state: str, wall: float) -> float | None:
        """Seconds in `state` by the BPF timeline; None before the probes saw it enter."""
        if self.bpf is None:
            return None
        since = self.bpf.state_since(netns, fam, row.laddr, row.lport, row.raddr, row.rport)
        return max(0.0, wall - since[1]) if since is not None and since[0] == state else None

    def _connections(
        self, att: Attributed, wall: float, owners: Mapping[int, tuple[int, str]], bpf_live: bool
    ) -> dict[ListenerKey, tuple[Connection, ...]] | None:
        if att.children is None or not self.keep_connections:
            return None
        # Every socket the last /proc walk saw; a child still queued (inode 0) will belong
        # to its listener's process.
        known = self.owners.by_inode
        listen_inode = {key: row.inode for key, row in att.listen_rows}
        out: dict[ListenerKey, list[Connection]] = {}
        for netns, row, parent in att.children:
            fam = FAMILY[row.family]
            state = model.state_name(row.state)
            age = self._age(netns, fam, row, state, wall) if bpf_live else None
            owner = known.get(row.inode) if row.inode else known.get(listen_inode.get(parent, 0))
            out.setdefault(parent, []).append(
                Connection(
                    netns, fam, state, row.laddr, row.lport, row.raddr, row.rport,
                    row.inode, row.cookie, row.rqueue, row.wqueue,
                    owner[0] if owner else None, owner[1] if owner else None, age_s=age, listener=parent,
                )
            )
        return {k: tuple(v) for k, v in out.items()}

    def _bpf_fields(
        self, att: Attributed, bpf: BpfReading | None, dt: float, raw: RawTick
    ) -> dict[ListenerKey, dict[str, Any]]:
        """The BPF-derived Listener fields per listener; empty when BPF is not live."""
        live = {key for key, _ in att.listen_rows}
        if bpf is None:
            self.overflows.prune(live)
            return {}
        counts = join_bpf(bpf, att.listen_rows, self.prev_bpf)
        lo_now = {ns.inode: ns.counters["ListenOverflows"] for ns in raw.netns.values() if "ListenOverflows" in ns.counters}
        over = self.overflows.update(att.listen_rows, counts, lo_now, dt, raw.notes)
        self.overflows.prune(live)
        out: dict[ListenerKey, dict[str, Any]] = {}
        for key, row in att.listen_rows:
            inp = FieldInput(counts[key], self.prev_bpf.get(key), bpf.hooks, row, dt)
            fields: dict[str, Any] = {"overflows": over[key][0], "overflow_rate": over[key][1]}
            for fn in LISTENER_BPF_FIELDS:
                fields.update(fn(inp))
            out[key] = fields
        self.prev_bpf = counts
        return out

    def _listeners_of(
        self,
        att: Attributed,
        owners: Mapping[int, tuple[int, str]],
        children: Mapping[ListenerKey, dict[str, int]] | None,
        fields: Mapping[ListenerKey, dict[str, Any]],
        dt: float,
    ) -> list[Listener]:
        out: list[Listener] = []
        groups = reuseport.assign((key, row.bound_if, row.v6only) for key, row in att.listen_rows)
        for key, row in att.listen_rows:
            drop_rate = model.rate(row.drops, self._prev_drops.get(key), dt) or 0.0
            owner = owners.get(row.inode)
            holders = self.owners.holders_of(row.inode) if owner else None
            group = groups.get(key)
            synq = att.syn_queue.get(key, 0)
            kids = children.get(key) if children is not None else None
            extra = fields.get(key, {})

            def make(key: ListenerKey = key, row: DiagRow = row, owner: Owner = owner, synq: int = synq,
                     kids: dict[str, int] | None = kids, extra: dict[str, Any] = extra,
                     drop_rate: float = drop_rate, holders: tuple[int, ...] | None = holders,
                     group: str | None = group) -> Listener:
                return Listener(
                    key=key, inode=row.inode, pid=owner[0] if owner else None, comm=owner[1] if owner else None,
                    holders=holders, reuseport_group=group,
                    accept_queue=row.rqueue, backlog=row.wqueue, syn_queue=synq, drops=max(row.drops, 0),
                    drop_rate=drop_rate, children=_with_main_states(kids) if children is not None else {},
                    **extra,
                )

            inputs = (row, owner, holders, group, synq, kids, tuple(extra.items()), drop_rate)
            out.append(self._listeners.get(key, inputs, make))
        self._listeners.end_tick()
        self._prev_drops = {key: row.drops for key, row in att.listen_rows}
        return out

    def _close_waits(
        self, att: Attributed, owners: Mapping[int, tuple[int, str]], wall: float, bpf_live: bool
    ) -> list[CloseWait]:
        listen_row_of = dict(att.listen_rows)
        out = []
        for netns, row, lkey in att.close_wait:
            fam = FAMILY[row.family]
            owner = owners.get(row.inode)
            if owner is None and row.inode == 0:
                # Still in the accept queue: nobody has it yet, but its listener's process will.
                lrow = listen_row_of.get(lkey) if lkey is not None else None
                owner = owners.get(lrow.inode) if lrow is not None else None
            age = self._age(netns, fam, row, "CLOSE_WAIT", wall) if bpf_live else None

            def make(netns: int = netns, row: DiagRow = row, owner: Owner = owner, age: float | None = age,
                     fam: str = fam, lkey: ListenerKey | None = lkey) -> CloseWait:
                return CloseWait(
                    netns, fam, row.laddr, row.lport, row.raddr, row.rport, row.inode, row.cookie,
                    owner[0] if owner else None, owner[1] if owner else None, row.rqueue, age, listener=lkey,
                )

            out.append(self._close_wait.get((netns, row.cookie), (row, owner, age, lkey), make))
        self._close_wait.end_tick()
        return out

    def _sources(self, raw: RawTick, bpf: BpfReading | None, state: str, error: str | None) -> Sources:
        hooks = dict(bpf.hooks) if bpf is not None else (dict(self.bpf.hooks) if self.bpf is not None else {})
        return Sources(
            netlink=raw.netlink_ok,
            bpf=bpf is not None,
            bpf_error=error,
            bpf_state=state,
            hooks=hooks,
            lost_events=bpf.lost_events if bpf is not None else 0,
            notes=(*raw.notes, *getattr(self.bpf, "notes", ())),
        )


def dataclass_replace_cookie(key: ListenerKey) -> ListenerKey:
    return ListenerKey(key.netns, key.family, key.laddr, key.lport, 0)


def _key(netns: int, row: DiagRow) -> ListenerKey:
    return ListenerKey(netns, FAMILY[row.family], row.laddr, row.lport, row.cookie)
