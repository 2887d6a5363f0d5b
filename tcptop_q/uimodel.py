"""What the UI keeps between ticks and hands between threads, without textual.

- `SocketRef`: what the socket screen needs to find one connection again.
- `History`: bounded per-listener series for the sparklines.
- `LatestSnapshot`: the collector -> UI hand-off, latest-only: a tick that is not shown yet is
  replaced by the next one (its feed events carried over), never queued behind it.

app.py re-exports SocketRef and History; screens import them from here (no screens <-> app cycle).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from array import array
from dataclasses import dataclass

from tcptop_q.model import ListenerKey, Snapshot

HISTORY_LEN = 120  # samples per listener kept for sparklines
HELD_EVENTS = 2000  # feed events carried over from replaced ticks, at most


class History:
    """Bounded per-listener series (peak depth, drops/s, queued/s), stored as float32 triples.

    10k listeners x 120 samples costs ~15 MB this way (tuples of floats would be ~150 MB).
    NaN marks "unknown".
    """

    FIELDS = ("peak", "drop_rate", "queued_rate")

    def __init__(self, length: int = HISTORY_LEN) -> None:
        self.length = length
        self.series: dict[ListenerKey, array] = {}
        self.times: list[float] = []

    def add(self, snap: Snapshot) -> None:
        nan = math.nan
        n = 3 * self.length
        series = self.series
        for lst in snap.listeners:
            a = series.get(lst.key)
            if a is None:
                a = series[lst.key] = array("f")
            peak = lst.peak_accept_queue if lst.peak_accept_queue is not None else lst.accept_queue
            a.extend((peak, lst.drop_rate, nan if lst.queued_rate is None else lst.queued_rate))
            if len(a) > n:
                del a[:3]
        if len(series) > 2 * len(snap.listeners) + 64:
            alive = {lst.key for lst in snap.listeners}
            for key in [k for k in series if k not in alive]:
                del series[key]

    def get(self, key: ListenerKey, field: str) -> list[float]:
        a = self.series.get(key)
        if a is None:
            return []
        i = self.FIELDS.index(field)
        return list(a[i::3])


@dataclass(frozen=True)
class SocketRef:
    """What the socket screen needs to find one connection again."""

    netns: int
    family: str
    laddr: str
    lport: int
    raddr: str
    rport: int
    cookie: int = 0
    inode: int = 0
    pid: int | None = None
    comm: str | None = None

    def label(self) -> str:
        def host(a: str) -> str:
            return f"[{a}]" if self.family == "ipv6" else a

        return f"{host(self.laddr)}:{self.lport} ⇄ {host(self.raddr)}:{self.rport}"



class LatestSnapshot:
    """A one-slot holder between the collector thread and the UI thread.

    put() (collector) replaces a snapshot the UI has not taken yet; it returns True only when
    the slot was empty, i.e. when the UI must be told (one pending wake-up at a time, however
    slow the UI). take() (UI) empties the slot. A replaced tick's feed events are prepended to
    the next one (bounded) and its children dump kept when the next tick has none, so a slow
    UI shows fewer frames but loses no transition it would have listed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self.replaced = 0  # ticks replaced before the UI took them (a slow UI)

    def put(self, snap: Snapshot) -> bool:
        with self._lock:
            old, self._snap = self._snap, snap
            if old is None:
                return True
            self.replaced += 1
            events = (*old.events, *snap.events)[-HELD_EVENTS:] if old.events else snap.events
            conns = snap.connections if snap.connections is not None else old.connections
            if events is not snap.events or conns is not snap.connections:
                self._snap = dataclasses.replace(snap, events=events, connections=conns)
            return False

    def take(self) -> Snapshot | None:
        with self._lock:
            snap, self._snap = self._snap, None
            return snap
