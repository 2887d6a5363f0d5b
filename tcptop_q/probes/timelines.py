"""Per-socket transition history built from the feed, LRU-bounded, kept after close until evicted.

Timelines cover what the feed carried (probes/bpf.py set_feed): a socket whose
transitions were filtered out has none. A child's first event (LISTEN ->
SYN_RECV) carries the listener's addresses; the tuple is taken from the first
event that has the peer, and earlier entries are rewritten with it. Accept
events (kind "accept") join the socket's current timeline.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import replace

from ..model import Transition

TIMELINE_SOCKETS = 20000
TIMELINE_ENTRIES = 16



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
            fresh = tl is None or (tr.kind == "state" and (
                (tl.entries and tl.entries[-1].new == "CLOSE") or tr.old == "CLOSE"
                or (tr.old == "LISTEN" and tr.new == "SYN_RECV")))
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

    def state_since(self, netns: int, family: str, laddr: str, lport: int, raddr: str,
                    rport: int) -> tuple[str, float] | None:
        """(state, unix time it was entered) from the socket's last state change."""
        for entry in reversed(self.by_tuple(netns, family, laddr, lport, raddr, rport)):
            if entry.kind == "state":
                return entry.new, entry.time
        return None
