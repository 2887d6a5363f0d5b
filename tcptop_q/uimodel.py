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

from tcptop_q.model import Listener, ListenerKey, Snapshot

HISTORY_LEN = 120  # samples per listener kept for sparklines
HELD_EVENTS = 2000  # feed events carried over from replaced ticks, at most


class History:
    """Bounded per-listener series, stored as float32 rows of len(FIELDS) values.

    10k listeners x 120 samples costs ~19 MB this way (tuples of floats would be ~190 MB).
    NaN marks "unknown" (no eBPF: no peak, no queued/s), never drawn as 0.
    `fill` is the accept-queue fill (peak when known, else the sampled depth) over what the
    queue holds (backlog+1), 0..1+: the main table's sparkline column.
    """

    FIELDS = ("peak", "depth", "fill", "drop_rate", "queued_rate")
    SPARK_CELLS = 10  # the main table's fill sparkline: 10 cells of SPARK_SECONDS each (one minute)
    SPARK_SECONDS = 6.0

    def __init__(self, length: int = HISTORY_LEN) -> None:
        self.length = length
        self.series: dict[ListenerKey, array] = {}
        self.times: list[float] = []
        # "Is it still happening?": when each listener last overflowed / dropped / grew its
        # CLOSE_WAIT pile, as seen by tcpq-top (since it started).
        self.last_overflow: dict[ListenerKey, float] = {}
        self.last_drop: dict[ListenerKey, float] = {}
        self.close_wait_grew: dict[ListenerKey, float] = {}
        self._close_wait: dict[ListenerKey, int] = {}
        self._spark: dict[ListenerKey, tuple[int, list[float]]] = {}
        self._levels: dict[ListenerKey, tuple[int, ...]] = {}  # spark levels, kept as they change
        self.started: float | None = None

    def add(self, snap: Snapshot) -> None:
        nan = math.nan
        w = len(self.FIELDS)
        n = w * self.length
        series = self.series
        for lst in snap.listeners:
            a = series.get(lst.key)
            if a is None:
                a = series[lst.key] = array("f")
            peak = lst.peak_accept_queue
            top = lst.accept_queue if peak is None else max(peak, lst.accept_queue)
            a.extend((
                nan if peak is None else peak,
                lst.accept_queue,
                top / (lst.backlog + 1),
                lst.drop_rate,
                nan if lst.queued_rate is None else lst.queued_rate,
            ))
            if len(a) > n:
                del a[:w]
            self._track(lst, snap.time, top / (lst.backlog + 1))
        if self.started is None:
            self.started = snap.time
        if len(series) > 2 * len(snap.listeners) + 64:
            alive = {lst.key for lst in snap.listeners}
            for table in (series, self.last_overflow, self.last_drop, self.close_wait_grew,
                          self._close_wait, self._spark, self._levels):
                for key in [k for k in table if k not in alive]:
                    del table[key]

    def _track(self, lst: Listener, now: float, fill: float) -> None:
        key = lst.key
        if lst.overflow_rate:
            self.last_overflow[key] = now
        if lst.drop_rate:
            self.last_drop[key] = now
        if lst.children:
            cw = lst.children.get("CLOSE_WAIT", 0)
            if cw > self._close_wait.get(key, cw):
                self.close_wait_grew[key] = now
            self._close_wait[key] = cw
        bucket = int(now // self.SPARK_SECONDS)
        old = self._spark.get(key)
        if old is None or old[0] != bucket:
            cells = [] if old is None else old[1]
            if old is not None:  # empty buckets for the ticks we did not see
                cells.extend([0.0] * min(self.SPARK_CELLS, bucket - old[0] - 1))
            cells.append(fill)
            del cells[: -self.SPARK_CELLS]
            self._spark[key] = (bucket, cells)
            self._levels[key] = tuple(min(8, math.ceil(v * 8)) for v in cells)
        elif fill > old[1][-1]:
            old[1][-1] = fill
            self._levels[key] = tuple(min(8, math.ceil(v * 8)) for v in old[1])

    def spark(self, key: ListenerKey) -> tuple[int, ...]:
        """The last minute's accept-queue fill, one level 0..8 per 6 s cell (max in the cell)."""
        return self._levels.get(key, ())

    def last_event(self, key: ListenerKey) -> tuple[float | None, float | None]:
        """(last overflow, last drop) times seen, None for none since tcpq-top started."""
        return self.last_overflow.get(key), self.last_drop.get(key)

    def close_wait_growing(self, key: ListenerKey, now: float, window: float = 30.0) -> bool:
        grew = self.close_wait_grew.get(key)
        return grew is not None and now - grew <= window

    def get(self, key: ListenerKey, field: str) -> list[float]:
        a = self.series.get(key)
        if a is None:
            return []
        w = len(self.FIELDS)
        return list(a[self.FIELDS.index(field)::w])

    def last(self, key: ListenerKey, field: str, n: int) -> list[float]:
        """The newest n values of one field (cheap: only those are copied)."""
        a = self.series.get(key)
        if a is None:
            return []
        w = len(self.FIELDS)
        i = self.FIELDS.index(field)
        start = max(0, len(a) - n * w)
        return list(a[start + i::w])


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

    @classmethod
    def of(cls, row) -> SocketRef:
        """The ref of a dumped connection row (model.Connection, model.CloseWait: both carry these fields)."""
        return cls(row.netns, row.family, row.laddr, row.lport, row.raddr, row.rport, row.cookie, row.inode,
                   row.pid, row.comm)

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
