"""Which listener a socket belongs to: decided once per tick, by the sampler.

Pure functions over ListenerKeys (no kernel, no textual): the sampler attributes every
request sock, child and CLOSE_WAIT socket with them, and the record codec re-attributes
the sockets of a recording made before sockets carried their listener.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .model import CloseWait, Connection, ListenerKey, Snapshot, Transition, v4_of_mapped

WILDCARD = {"ipv4": "0.0.0.0", "ipv6": "::"}

Index = Mapping[tuple[int, int, str], ListenerKey]


def listener_index(listeners: Iterable[tuple[ListenerKey, Any]]) -> dict[tuple[int, int, str], ListenerKey]:
    """(netns, lport, laddr) -> listener key; for SO_REUSEPORT groups the first socket stands for
    all (the sampler then asks the kernel's child -> listener link, sampler._Parents)."""
    index: dict[tuple[int, int, str], ListenerKey] = {}
    for key, _ in listeners:
        index.setdefault((key.netns, key.lport, key.laddr), key)
    return index


def owner_listener(index: Index, netns: int, family: str, laddr: str, lport: int) -> ListenerKey | None:
    """The listener a child or request socket belongs to.

    Exact local address first; then the wildcard of its family; a v4-mapped
    address on an IPv6 socket also matches an IPv4 listener on that address.
    """
    key = index.get((netns, lport, laddr))
    if key is not None:
        return key
    if family == "ipv6" and laddr.startswith("::ffff:"):
        v4 = v4_of_mapped(laddr)
        if v4 is not None:
            key = index.get((netns, lport, v4)) or index.get((netns, lport, "0.0.0.0"))
            if key is not None:
                return key
    return index.get((netns, lport, WILDCARD.get(family, "")))


def attribute_events(events: Iterable[Transition], index: Index) -> tuple[Transition, ...]:
    """Feed events, each with the listener it belongs to (the feed filters on it)."""
    return tuple(
        dataclasses.replace(ev, listener=owner_listener(index, ev.netns, ev.family, ev.laddr, ev.lport))
        for ev in events
    )


def attribute_snapshot(snap: Snapshot) -> Snapshot:
    """`snap` with every CLOSE_WAIT socket, child and feed event given its listener, as the
    sampler gives them: for a snapshot read back from JSON, which does not carry it."""
    index = listener_index((lst.key, lst) for lst in snap.listeners)

    def owner(cw: CloseWait) -> ListenerKey | None:
        return owner_listener(index, cw.netns, cw.family, cw.laddr, cw.lport)

    conns = snap.connections
    return dataclasses.replace(
        snap,
        close_wait=[dataclasses.replace(cw, listener=owner(cw)) for cw in snap.close_wait],
        events=attribute_events(snap.events, index),
        connections=(
            None
            if conns is None
            else {key: _with_listener(group, key) for key, group in conns.items()}
        ),
    )


def _with_listener(group: Sequence[Connection], key: ListenerKey) -> Sequence[Connection]:
    out = [dataclasses.replace(c, listener=key) for c in group]
    return out if isinstance(group, list) else tuple(out)  # keep the container the caller built
