"""Kernel map contents and feed records turned into model records.

Everything here takes a loaded bcc object (or raw bytes) and returns plain
data; BpfProbes (probes/bpf.py) decides when to call it, under its lock.
"""

from __future__ import annotations

import ctypes
import ipaddress
from collections.abc import Iterable, Mapping

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
    try:
        return list(table.items_lookup_batch())
    except Exception:
        return list(table.items())


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


def peaks(table, epoch: int) -> dict[int, int]:
    """Peak depth per listener over finished intervals (epochs before `epoch`); deletes them."""
    out: dict[int, int] = {}
    stale = []
    for k, v in items(table):
        if k.epoch < epoch:
            out[k.sk] = max(out.get(k.sk, 0), as_int(v))
            stale.append(k)
    for k in stale:
        delete(table, k)
    return out


def reasons(entries: Iterable, names: Mapping[int, str]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for k, v in entries:
        name = names.get(k.reason, f"REASON_{k.reason}")
        per = out.setdefault(k.sk, {})
        per[name] = per.get(name, 0) + as_int(v)
    return out


def histograms(entries: Iterable) -> dict[tuple[int, int, int], dict[int, int]]:
    """(listener sk, its born_ns, layout.HIST_*) -> bucket index -> count."""
    out: dict[tuple[int, int, int], dict[int, int]] = {}
    for k, v in entries:
        out.setdefault((k.sk, k.born_ns, k.hist), {})[int(k.bucket)] = as_int(v)
    return out


def hist_maxima(entries: Iterable) -> dict[tuple[int, int, int], int]:
    """tq_hist_max (a per-CPU hash, probes/accept.bpf.c): (listener sk, born_ns, layout.HIST_*)
    -> the largest sample any CPU kept."""
    out: dict[tuple[int, int, int], int] = {}
    for k, v in entries:
        per_cpu = [as_int(x) for x in v] if hasattr(v, "__len__") else [as_int(v)]
        key = (k.sk, k.born_ns, k.hist)
        out[key] = max([out.get(key, 0), *per_cpu])
    return out


def listener_key(v) -> ListenerKey:
    if v.family == 2:
        return ListenerKey(v.netns, "ipv4", ipaddress.IPv4Address(bytes(v.laddr[:4])).compressed, v.lport, v.cookie)
    return ListenerKey(v.netns, "ipv6", ipaddress.IPv6Address(bytes(v.laddr)).compressed, v.lport, v.cookie)


def listener_counts(v, sk: int, hooks: Mapping[str, str], peak: int, drop_reasons: dict[str, int],
                    hists: Mapping[tuple[int, int, int], dict[int, int]],
                    maxima: Mapping[tuple[int, int, int], int] | None = None) -> BpfListenerCounts:
    """One tq_listeners value; histograms only where their hook is attached. The exact max
    is the larger of the shared one and the per-CPU ones (`maxima`, probes/accept.bpf.c)."""
    wait = hs = None
    mx = maxima or {}
    if "accept_wait" in hooks:
        k = (sk, v.born_ns, layout.HIST_WAIT)
        wait = HistCounts(v.wait_count, v.wait_sum_ns, max(v.wait_max_ns, mx.get(k, 0)), hists.get(k, {}))
    if "handshake" in hooks:
        k = (sk, v.born_ns, layout.HIST_HANDSHAKE)
        hs = HistCounts(v.hs_count, v.hs_sum_ns, max(v.hs_max_ns, mx.get(k, 0)), hists.get(k, {}))
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


def child_states(table, live_ports: set[tuple[int, int]]) -> dict[tuple[int, int], dict[str, int]]:
    """Per (netns, port): children entered minus left each state; drops entries of closed ports."""
    out: dict[tuple[int, int], dict[str, int]] = {}
    for k, v in items(table):
        per = {state_name(i): int(n) for i, n in enumerate(v.n) if n and i not in (7, 10)}
        if not per and (k.netns, k.lport) not in live_ports:
            delete(table, k)  # no live child, no listener: a closed port (bounded map)
            continue
        out[(k.netns, k.lport)] = per
    return out


def in_queue(table, mono_to_unix: float) -> dict[tuple[int, str, str, int], float]:
    """Children linked to a listener and not accepted yet: (netns, family, raddr, rport) -> unix time queued."""
    out: dict[tuple[int, str, str, int], float] = {}
    for _k, v in items(table):
        if not v.listener:  # accepted: kept until the child closes (probes/accept.bpf.c)
            continue
        fam = "ipv4" if v.family == 2 else "ipv6"
        out[(int(v.netns), fam, addr(v.family, bytes(v.raddr)), int(v.rport))] = v.queued_ns / 1e9 + mono_to_unix
    return out


def lost(table) -> tuple[int, int]:
    """(feed events lost in the kernel, listener events not counted: map full)."""
    return int(table.sum(ctypes.c_int(0)).value), int(table.sum(ctypes.c_int(1)).value)
