"""One socket's timeline out of a stream of state transitions, as the live probes build it.

The kernel reports some transitions before a socket has its whole 4-tuple: a client's
CLOSE -> SYN_SENT fires in tcp_v4_connect/tcp_v6_connect before the source port is chosen
(local port 0), and a child's LISTEN -> SYN_RECV carries its listener's addresses. So a
transition belongs to a socket by (netns, skaddr), one socket's life at a time (a new one
starts after CLOSE, from CLOSE, or at LISTEN -> SYN_RECV), and the socket's 4-tuple is the
first full one seen, written back onto its earlier transitions and onto later tuple-less ones.
Matching recorded transitions on the exact tuple instead loses every client's connect().

Pure: no kernel, no threads. tcptop_q/record.py replays timelines with it; the live side
(probes/bpf.py Timelines.add) applies the same rules incrementally, and can call `starts_life`
and `full_tuple` to share them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import replace

from .model import Transition

ENTRIES = 16  # transitions kept per socket, as the live timelines keep (probes/bpf.py TIMELINE_ENTRIES)

Tuple6 = tuple[int, str, str, int, str, int]  # netns, family, laddr, lport, raddr, rport


def full_tuple(tr: Transition) -> Tuple6 | None:
    """The transition's 4-tuple (with netns and family), None while it is not known yet."""
    if not tr.rport or not tr.lport or tr.raddr in ("0.0.0.0", "::"):
        return None
    return (tr.netns, tr.family, tr.laddr, tr.lport, tr.raddr, tr.rport)


def starts_life(last: Transition | None, tr: Transition) -> bool:
    """True when `tr` begins a new socket at an address whose previous transition was `last`
    (the slab hands a freed socket's address to the next one)."""
    return last is None or last.new == "CLOSE" or tr.old == "CLOSE" or (tr.old == "LISTEN" and tr.new == "SYN_RECV")


class _Life:
    __slots__ = ("tuple", "entries")

    def __init__(self) -> None:
        self.tuple: Tuple6 | None = None
        self.entries: deque[Transition] = deque(maxlen=ENTRIES)

    def add(self, tr: Transition) -> None:
        tup = full_tuple(tr)
        if tup is not None and self.tuple is None:
            self.tuple = tup
            self.entries = deque(
                (replace(e, family=tr.family, laddr=tr.laddr, lport=tr.lport, raddr=tr.raddr, rport=tr.rport)
                 for e in self.entries),
                maxlen=ENTRIES,
            )
        elif self.tuple is not None and tup is None:
            _n, fam, la, lp, ra, rp = self.tuple
            tr = replace(tr, family=fam, laddr=la, lport=lp, raddr=ra, rport=rp)
        self.entries.append(tr)


def socket_timeline(
    events: Iterable[Transition], netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int
) -> list[Transition]:
    """The timeline of the socket with this tuple (its latest life), from `events` in order.

    Two passes, the second only over the addresses the tuple was seen at: linear in events."""
    events = events if isinstance(events, (list, tuple)) else list(events)
    want = (netns, family, laddr, lport, raddr, rport)
    where = {(tr.netns, tr.skaddr) for tr in events if full_tuple(tr) == want}
    if not where:
        return []
    current: dict[tuple[int, int], _Life] = {}
    found: _Life | None = None
    for tr in events:
        at = (tr.netns, tr.skaddr)
        if at not in where:
            continue
        life = current.get(at)
        if life is None or starts_life(life.entries[-1] if life.entries else None, tr):
            life = current[at] = _Life()
        had = life.tuple
        life.add(tr)
        if had is None and life.tuple == want:
            found = life  # the latest socket that took this tuple, as the live map keeps it
    return list(found.entries) if found is not None else []
