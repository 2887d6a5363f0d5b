"""The application's half of the accept queue, merged into a snapshot: accepted,
accepted_rate, accept_wait (since live and over the last few ticks), handshake, and
the time children still in an accept queue have waited there.

The sampler calls AcceptTracker.apply() once per tick on the snapshot it built;
the numbers come from probes/accept.bpf.c (docs/ACCEPT.md). Pure apart from the
one call to probes.in_queue() when the snapshot holds children nobody accepted.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from . import model
from .model import BpfListenerCounts, BpfReading, HistCounts, ListenerKey, Snapshot
from .probes import hist

RECENT_TICKS = 5  # WAIT p99 column: the histogram's growth over the last 5 ticks


@runtime_checkable
class QueueTimes(Protocol):
    """What apply() needs of the probes (BpfProbes.in_queue)."""

    def in_queue(self) -> Mapping[tuple[int, str, str, int], float]: ...


class AcceptTracker:
    def __init__(self, recent_ticks: int = RECENT_TICKS) -> None:
        self.recent_ticks = recent_ticks
        self._accepted: dict[ListenerKey, int] = {}
        self._waits: dict[ListenerKey, collections.deque[HistCounts]] = {}

    def apply(self, snap: Snapshot, reading: BpfReading | None, probes: object | None,
              joined: Mapping[ListenerKey, BpfListenerCounts] | None = None) -> Snapshot:
        """`joined`: the reading's counts per listener row as the sampler joined them
        (sampler.join_bpf: cookie, socket inode; never another socket's); without it, by key
        or address."""
        if reading is None:
            return snap
        hooks = reading.hooks
        by_tuple = {_no_cookie(k): v for k, v in reading.listeners.items()}
        listeners = []
        live = set()
        for lst in snap.listeners:
            if joined is not None:
                counts = joined.get(lst.key)
            else:
                counts = reading.listeners.get(lst.key) or by_tuple.get(_no_cookie(lst.key))
            live.add(lst.key)
            listeners.append(self._listener(lst, counts, hooks, snap.interval))
        for gone in [k for k in self._accepted if k not in live]:
            self._accepted.pop(gone, None)
            self._waits.pop(gone, None)
        close_wait = snap.close_wait
        connections = snap.connections
        if "accepted" in hooks and _has_unaccepted(snap):
            times = probes.in_queue() if isinstance(probes, QueueTimes) else {}
            close_wait = [_with_queued(cw, times, snap.time) for cw in snap.close_wait]
            if connections is not None:
                connections = {k: tuple(_with_queued(c, times, snap.time) for c in v) for k, v in connections.items()}
        return dataclasses.replace(snap, listeners=listeners, close_wait=close_wait, connections=connections)

    def _listener(self, lst: model.Listener, counts: BpfListenerCounts | None, hooks: Mapping[str, str],
                  interval: float) -> model.Listener:
        if counts is None:
            counts = BpfListenerCounts()
        fields: dict = {}
        if "accepted" in hooks:
            before = self._accepted.get(lst.key)
            fields["accepted"] = counts.accepted
            fields["accepted_rate"] = (
                model.rate(counts.accepted, before if before is not None else 0, interval) if interval > 0 else None
            )
            self._accepted[lst.key] = counts.accepted
        if "accept_wait" in hooks:
            wait = counts.accept_wait or HistCounts()
            window = self._waits.setdefault(lst.key, collections.deque(maxlen=self.recent_ticks + 1))
            if window and wait.count < window[-1].count:  # a new socket under the same key
                window.clear()
            window.append(wait)
            fields["accept_wait"] = hist.summary(wait)
            fields["accept_wait_recent"] = hist.summary(hist.delta(wait, window[0] if len(window) > 1 else None),
                                                        exact_max=False)
        if "handshake" in hooks:
            fields["handshake"] = hist.summary(counts.handshake or HistCounts())
        return dataclasses.replace(lst, **fields) if fields else lst


def _no_cookie(key: ListenerKey) -> ListenerKey:
    return ListenerKey(key.netns, key.family, key.laddr, key.lport, 0)


def _has_unaccepted(snap: Snapshot) -> bool:
    if any(cw.inode == 0 for cw in snap.close_wait):
        return True
    return snap.connections is not None and any(
        c.inode == 0 and c.state in ("ESTABLISHED", "CLOSE_WAIT") for v in snap.connections.values() for c in v
    )


def _with_queued(row, times: Mapping[tuple[int, str, str, int], float], now: float):
    """A child row (CloseWait or Connection) with its time in the accept queue, if still there."""
    if row.inode != 0:
        return row
    queued = times.get((row.netns, row.family, row.raddr, row.rport))
    if queued is None:
        return row
    return dataclasses.replace(row, queued_s=max(0.0, now - queued))
