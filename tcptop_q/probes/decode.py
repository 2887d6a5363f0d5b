"""Kernel map contents and feed records turned into model records.

Everything here takes a loaded bcc object (or raw bytes) and returns plain
data; BpfProbes (probes/bpf.py) decides when to call it, under its lock.
"""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from ..model import BpfListenerCounts, HistCounts, ListenerKey, Transition, state_name
from . import hist, layout

_ADDRS: dict[tuple[int, bytes], str] = {}


def addr(family: int, raw: bytes) -> str:
    """Compressed text of an address; cached, since a storm repeats the same few."""
    key = (family, raw)
    text = _ADDRS.get(key)
    if text is None:
        ip = ipaddress.IPv4Address(raw[:4]) if family == 2 else ipaddress.IPv6Address(raw)
        text = ip.compressed
        if len(_ADDRS) > 65536:
            _ADDRS.clear()
        _ADDRS[key] = text
    return text


def delete(table, key) -> None:
    try:
        del table[key]
    except KeyError:
        pass


def as_int(x) -> int:
    return x if isinstance(x, int) else int(x.value)


def items(table) -> list:
    """Every (key, value) of a map, each key once. The get_next_key walk (kernels or maps
    without batch lookup) starts over from the first key when the one it stands on is
    deleted meanwhile, and would then yield entries twice: the last value of each key wins."""
    try:
        return list(table.items_lookup_batch())
    except Exception:
        pass
    seen: dict[bytes, tuple] = {}
    for k, v in table.items():
        seen[bytes(k)] = (k, v)
    return list(seen.values())


def event(raw: bytes, mono_to_unix: float) -> Transition:
    """One struct tq_event (probes/layout.py) as a Transition."""
    f = dict(zip(layout.EVENT_NAMES, layout.EVENT.unpack(raw), strict=True))
    family = f["family"]
    accept = f["kind"] == layout.EV_ACCEPT
    ns_old = f["ns_in_old"]
    return Transition(
        time=f["ts_ns"] / 1e9 + mono_to_unix,
        netns=f["netns"],
        skaddr=f["skaddr"],
        family="ipv4" if family == 2 else "ipv6",
        laddr=addr(family, f["saddr"]),
        lport=f["sport"],
        raddr=addr(family, f["daddr"]),
        rport=f["dport"],
        old=state_name(f["oldstate"]),
        new=state_name(f["newstate"]),
        ms_in_old=None if ns_old == layout.NO_TIME else ns_old / 1e6,
        pid=f["pid"],
        comm=f["comm"].split(b"\0", 1)[0].decode("utf-8", "replace"),
        kind="accept" if accept else "state",
        fd=None if not accept or f["fd"] == layout.NO_FD else f["fd"],
    )


# struct tq_listener fields that are not counters (probes/tcpq.bpf.c): copied, not summed.
IDENTITY = frozenset({"cookie", "netns", "family", "lport", "laddr", "max_ack_backlog", "_pad", "born_ns",
                      "peak", "peak_epoch", "inode"})


def per_cpu(table) -> dict:
    """key -> list of this key's per-CPU values (a bcc per-CPU hash)."""
    return {k: list(v) for k, v in items(table)}


def peak_of(copies: Iterable, epoch: int) -> int:
    """The deepest accept queue of read interval `epoch` over a listener's copies (shared and
    per CPU): each keeps the two intervals epoch & 1 (probes/tcpq.bpf.c tq_peak_note)."""
    i, tag = epoch & 1, epoch & 0xFFFFFFFF
    return max((int(c.peak[i]) for c in copies if int(c.peak_epoch[i]) == tag), default=0)


def summed(v, copies: list) -> SimpleNamespace:
    """A listener's shared entry plus its per-CPU copies of the same listener (same born_ns):
    identity from the shared entry (cookie: whichever copy has it), counters summed, the
    *_max_ns fields the maximum."""
    live = [v, *(c for c in copies if c.born_ns == v.born_ns)]
    out = {}
    for name, _ctype in v._fields_:
        if name in IDENTITY:
            out[name] = getattr(v, name)
        elif name.endswith("_max_ns"):
            out[name] = max(int(getattr(c, name)) for c in live)
        else:
            out[name] = sum(int(getattr(c, name)) for c in live)
    out["cookie"] = max(int(c.cookie) for c in live)
    return SimpleNamespace(**out)


def reasons(entries: Iterable, names: Mapping[int, str]) -> dict[tuple[int, int], dict[str, int]]:
    """(listener sk, its born_ns) -> reason name -> count."""
    out: dict[tuple[int, int], dict[str, int]] = {}
    for k, v in entries:
        name = names.get(k.reason, f"REASON_{k.reason}")
        per = out.setdefault((int(k.sk), int(k.born_ns)), {})
        per[name] = per.get(name, 0) + as_int(v)
    return out


def histograms(entries: Iterable) -> dict[tuple[int, int, int], dict[int, int]]:
    """(listener sk, its born_ns, layout.HIST_*) -> bucket index -> count."""
    out: dict[tuple[int, int, int], dict[int, int]] = {}
    for k, v in entries:
        out.setdefault((k.sk, k.born_ns, k.hist), {})[int(k.bucket)] = as_int(v)
    return out


def listener_key(v) -> ListenerKey:
    if v.family == 2:
        return ListenerKey(v.netns, "ipv4", ipaddress.IPv4Address(bytes(v.laddr[:4])).compressed, v.lport, v.cookie)
    return ListenerKey(v.netns, "ipv6", ipaddress.IPv6Address(bytes(v.laddr)).compressed, v.lport, v.cookie)


def listener_counts(v, sk: int, hooks: Mapping[str, str], peak: int, drop_reasons: dict[str, int],
                    hists: Mapping[tuple[int, int, int], dict[int, int]]) -> BpfListenerCounts:
    """One tq_listeners value; histograms only where their hook is attached."""
    wait = hs = None
    if "accept_wait" in hooks:
        wait = HistCounts(v.wait_count, v.wait_sum_ns, v.wait_max_ns, hists.get((sk, v.born_ns, layout.HIST_WAIT), {}))
    if "handshake" in hooks:
        hs = HistCounts(v.hs_count, v.hs_sum_ns, v.hs_max_ns, hists.get((sk, v.born_ns, layout.HIST_HANDSHAKE), {}))
    return BpfListenerCounts(
        queued=v.queued,
        peak_accept_queue=peak,
        synack_retrans=v.synack_retrans,
        listen_overflow_drops=v.listen_overflow_drops,
        other_rx_drops=v.other_rx_drops,
        resets_sent=v.resets_sent,
        resets_received=v.resets_received,
        syn_overflows=v.syn_overflows if "syn_overflows" in hooks else None,
        drop_reasons=drop_reasons,
        accepted=v.accepted,
        accept_wait=wait,
        handshake=hs,
    )


def sum_counts(a: BpfListenerCounts, b: BpfListenerCounts) -> BpfListenerCounts:
    drop_reasons = dict(a.drop_reasons)
    for k, v in b.drop_reasons.items():
        drop_reasons[k] = drop_reasons.get(k, 0) + v
    return BpfListenerCounts(
        queued=a.queued + b.queued,
        peak_accept_queue=max(a.peak_accept_queue, b.peak_accept_queue),
        synack_retrans=a.synack_retrans + b.synack_retrans,
        listen_overflow_drops=a.listen_overflow_drops + b.listen_overflow_drops,
        other_rx_drops=a.other_rx_drops + b.other_rx_drops,
        resets_sent=a.resets_sent + b.resets_sent,
        resets_received=a.resets_received + b.resets_received,
        syn_overflows=None if a.syn_overflows is None or b.syn_overflows is None else a.syn_overflows + b.syn_overflows,
        drop_reasons=drop_reasons,
        accepted=a.accepted + b.accepted,
        accept_wait=hist.add(a.accept_wait, b.accept_wait),
        handshake=hist.add(a.handshake, b.handshake),
    )


def child_states(
    table, live_ports: set[tuple[int, int]], live: Mapping[int, int], inodes: Mapping[int, tuple[int, int]],
    pcpu_table=None,
) -> tuple[dict[tuple[int, int], dict[str, int]], dict[tuple[int, int], dict[str, int]]]:
    """Children entered minus left each state (the shared entry and the per-CPU copies summed):
    per (netns, port) for those not queued on a listener yet, and per listener (netns, socket
    inode) for those queued on it. Deletes the entries of closed listeners, and of closed ports
    once no child of theirs is left (bounded maps)."""
    sums: dict[tuple[Any, ...], list[int]] = {}
    keys: dict[tuple[Any, ...], list] = {}
    sources = [(table, [(k, [v]) for k, v in items(table)])]
    if pcpu_table is not None:
        sources.append((pcpu_table, [(k, list(v)) for k, v in items(pcpu_table)]))
    for tbl, entries in sources:
        for k, values in entries:
            lsk = int(k.listener)
            group: tuple[Any, ...] = ("L", lsk, int(k.born_ns), int(k.netns), int(k.lport)) if lsk else ("P", int(k.netns), int(k.lport))
            acc = sums.setdefault(group, [0] * 16)
            for v in values:
                for i, n in enumerate(v.n):
                    acc[i] += int(n)
            keys.setdefault(group, []).append((tbl, k))
    per_port: dict[tuple[int, int], dict[str, int]] = {}
    per_listener: dict[tuple[int, int], dict[str, int]] = {}
    for group, acc in sums.items():
        per = {state_name(i): n for i, n in enumerate(acc) if n and i not in (7, 10)}
        if group[0] == "L":
            lsk, born, netns, lport = group[1], group[2], group[3], group[4]
            if live.get(lsk) != born:
                # Its listener closed: nothing reads these counts again, and a child still
                # open finds no entry (its changes are not counted anywhere): safe to sweep.
                for tbl, k in keys[group]:
                    delete(tbl, k)
            elif lsk in inodes:
                per_listener[inodes[lsk]] = per
            else:  # no inode to name the listener by: counted with its port, as before it was queued
                port = per_port.setdefault((netns, lport), {})
                for state, n in per.items():
                    port[state] = port.get(state, 0) + n
            continue
        where = (group[1], group[2])
        if not per and where not in live_ports:
            for tbl, k in keys[group]:
                delete(tbl, k)  # no live child, no listener: a closed port (bounded map)
            continue
        port = per_port.setdefault(where, {})
        for state, n in per.items():
            port[state] = port.get(state, 0) + n
    return per_port, per_listener


Tuple6 = tuple[int, str, str, int, str, int]


def child_links(table, inodes: Mapping[int, tuple[int, int]]) -> tuple[dict[Tuple6, tuple[int, int]], dict[int, tuple[int, int]]]:
    """Children queued on a listener, each -> (netns, inode) of that listener: by tuple
    (netns, family, laddr, lport, raddr, rport), for sock_diag rows, and by socket address,
    for feed events."""
    by_tuple: dict[Tuple6, tuple[int, int]] = {}
    by_sk: dict[int, tuple[int, int]] = {}
    for k, v in items(table):
        lid = inodes.get(int(v.listener)) if v.listener else None
        if lid is None:
            continue
        fam = int(v.family)
        by_tuple[(int(v.netns), "ipv4" if fam == 2 else "ipv6", addr(fam, bytes(v.laddr)), int(v.lport),
                  addr(fam, bytes(v.raddr)), int(v.rport))] = lid
        by_sk[as_int(k)] = lid
    return by_tuple, by_sk


def in_queue(table, mono_to_unix: float) -> dict[tuple[int, str, str, int], float]:
    """Children linked to a listener and not accepted yet: (netns, family, raddr, rport) -> unix time queued."""
    out: dict[tuple[int, str, str, int], float] = {}
    for _k, v in items(table):
        fam = "ipv4" if v.family == 2 else "ipv6"
        out[(int(v.netns), fam, addr(v.family, bytes(v.raddr)), int(v.rport))] = v.queued_ns / 1e9 + mono_to_unix
    return out


def lost(table) -> tuple[int, int]:
    """(feed events lost in the kernel, listener events not counted: map full)."""
    return int(table.sum(ctypes.c_int(0)).value), int(table.sum(ctypes.c_int(1)).value)
