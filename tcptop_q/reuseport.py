"""SO_REUSEPORT groups: which listeners share one port, and how evenly the kernel's spread lands.

sock_diag does not name a group, but the kernel only lets two sockets listen on the same
netns, address and port when both set SO_REUSEPORT; it then puts them in one group
(inet_reuseport_add_sock) only if they also have the same family, the same IPV6_V6ONLY and
the same bound device (SO_BINDTODEVICE). So:

- 0.0.0.0:80 and [::]:80 are never one group (two families: a dual-stack pair, two groups or
  two single listeners; IPv4 clients reach the IPv4 one first);
- two [::]:80 members, one IPV6_V6ONLY and one not, are two groups;
- 127.0.0.1:80 and 0.0.0.0:80 are two groups (the kernel compares the exact address).

Each member has its own accept queue; the kernel picks a member per connection by a hash of
the 4-tuple (or a reuseport BPF program), not by load: a member that stops accepting keeps
getting its share, and drops it. Pure functions; nothing here touches the kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import Listener, ListenerKey


def group_id(key: ListenerKey, bound_if: int = 0, v6only: int = -1) -> str:
    """The id members of one group share: netns/family/address:port, the bound device (%N)
    and /v6only when they set IPV6_V6ONLY."""
    out = f"{key.netns}/{key.family}/{key.label()}"
    if bound_if:
        out += f"%{bound_if}"
    if key.family == "ipv6" and v6only == 1:
        out += "/v6only"
    return out


def assign(listeners: Iterable[tuple[ListenerKey, int, int]]) -> dict[ListenerKey, str]:
    """(key, bound_if, v6only) of every listener -> the group id of those in a group of two
    or more; a listener alone on its address is in no group."""
    members: dict[str, list[ListenerKey]] = {}
    for key, bound_if, v6only in listeners:
        members.setdefault(group_id(key, bound_if, v6only), []).append(key)
    return {key: gid for gid, keys in members.items() if len(keys) > 1 for key in keys}


def fill(listener: Listener) -> float:
    """The share of its accept queue in use: the queue holds backlog+1 (sk_acceptq_is_full)."""
    return listener.accept_queue / (listener.backlog + 1)


def is_full(listener: Listener) -> bool:
    return listener.accept_queue > listener.backlog


def imbalance(values: Sequence[float | None]) -> float | None:
    """max / mean: 1.0 when every member has the same, N when one of N has it all.
    None when a value is unknown, or when they are all 0 (nothing to compare)."""
    if not values or any(v is None for v in values):
        return None
    known = [float(v) for v in values if v is not None]
    total = sum(known)
    if total <= 0:
        return None
    return max(known) / (total / len(known))


@dataclass(frozen=True)
class ReuseportGroup:
    id: str
    members: tuple[Listener, ...]  # ordered by socket cookie

    @property
    def first(self) -> Listener:
        return self.members[0]

    @property
    def queued_imbalance(self) -> float | None:
        return imbalance([m.queued_rate for m in self.members])

    @property
    def fill_imbalance(self) -> float | None:
        return imbalance([fill(m) for m in self.members])

    @property
    def busiest(self) -> tuple[Listener, float] | None:
        """The member with the highest queued rate, and its share of the group's; None if unknown."""
        rates = [m.queued_rate for m in self.members]
        if any(r is None for r in rates):
            return None
        total = sum(r for r in rates if r is not None)
        if total <= 0:
            return None
        top = max(self.members, key=lambda m: m.queued_rate or 0.0)
        return top, (top.queued_rate or 0.0) / total

    @property
    def full(self) -> int:
        return sum(1 for m in self.members if is_full(m))


def groups(listeners: Iterable[Listener]) -> list[ReuseportGroup]:
    """The groups among `listeners` (those with a reuseport_group), in order of first appearance."""
    by_id: dict[str, list[Listener]] = {}
    for lst in listeners:
        if lst.reuseport_group is not None:
            by_id.setdefault(lst.reuseport_group, []).append(lst)
    return [
        ReuseportGroup(gid, tuple(sorted(members, key=lambda m: m.key.cookie)))
        for gid, members in by_id.items()
    ]


def members_of(listener: Listener, listeners: Iterable[Listener]) -> tuple[Listener, ...]:
    """The listener's group (itself included), by cookie; () when it is in none."""
    if listener.reuseport_group is None:
        return ()
    return tuple(sorted((x for x in listeners if x.reuseport_group == listener.reuseport_group),
                        key=lambda m: m.key.cookie))


def group_to_json(group: ReuseportGroup) -> dict:
    first = group.first
    return {
        "id": group.id,
        "netns": first.key.netns,
        "family": first.key.family,
        "laddr": first.key.laddr,
        "lport": first.key.lport,
        "members": [m.key.cookie for m in group.members],
        "queued_imbalance": group.queued_imbalance,
        "fill_imbalance": group.fill_imbalance,
        "full_members": group.full,
    }
