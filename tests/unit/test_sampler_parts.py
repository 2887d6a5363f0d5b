"""The sampler's parts on synthetic readings: no root, no kernel.

Each part has one job (tcptop_q/sampler.py): attribution, the overflow baselines,
children between dumps, the BPF field functions, object reuse, netns rates.
"""

from __future__ import annotations

import socket

import pytest

from tcptop_q.model import BpfListenerCounts, BpfReading, ListenerKey
from tcptop_q.probes import diag
from tcptop_q.probes.diag import DiagRow
from tcptop_q.sampler import (
    LISTENER_BPF_FIELDS,
    ChildrenTracker,
    FieldInput,
    NetnsRaw,
    OverflowTracker,
    RawTick,
    ReuseCache,
    Sampler,
    attribute,
    counter_field,
    netns_counters,
)

NS = 4026532100
V4 = int(socket.AF_INET)
V6 = int(socket.AF_INET6)


def row(state: int, laddr: str, lport: int, *, raddr: str = "0.0.0.0", rport: int = 0, cookie: int = 1,
        rqueue: int = 0, wqueue: int = 128, inode: int = 0, drops: int = 0, family: int = V4) -> DiagRow:
    return DiagRow(family, state, laddr, lport, raddr, rport, cookie, rqueue, wqueue, 0, inode, drops, 0)


def listen(laddr: str, lport: int, *, cookie: int, drops: int = 0, family: int = V4, inode: int = 0) -> DiagRow:
    return row(diag.TCP_LISTEN, laddr, lport, cookie=cookie, drops=drops, family=family, inode=inode)


def key_of(r: DiagRow, netns: int = NS) -> ListenerKey:
    return ListenerKey(netns, "ipv4" if r.family == V4 else "ipv6", r.laddr, r.lport, r.cookie)


def tick(rows, *, mono: float = 0.0, children=None, counters=None, netns: int = NS) -> RawTick:
    return RawTick(mono, 1_700_000_000.0 + mono, {netns: NetnsRaw(netns, counters or {}, {}, list(rows), children)})


# ---------------------------------------------------------------- attribution


def test_two_addresses_on_one_port_each_get_only_their_sockets():
    lo, other = listen("127.0.0.1", 8080, cookie=1), listen("10.0.0.5", 8080, cookie=2)
    cw_lo = row(diag.TCP_CLOSE_WAIT, "127.0.0.1", 8080, raddr="127.0.0.1", rport=50000, cookie=10)
    cw_other = row(diag.TCP_CLOSE_WAIT, "10.0.0.5", 8080, raddr="10.0.0.9", rport=50001, cookie=11)
    syn = row(diag.TCP_NEW_SYN_RECV, "10.0.0.5", 8080, raddr="10.0.0.9", rport=50002, cookie=12)
    est = row(diag.TCP_ESTABLISHED, "127.0.0.1", 8080, raddr="127.0.0.1", rport=50003, cookie=13)
    att = attribute(tick([lo, other, cw_lo, cw_other, syn], children=[est]))
    assert [parent for _, _, parent in att.close_wait] == [key_of(lo), key_of(other)]
    assert att.syn_queue == {key_of(other): 1}
    assert att.close_wait_counts() == {key_of(lo): 1, key_of(other): 1}
    assert att.children_counts() == {key_of(lo): {"ESTABLISHED": 1}}


def test_wildcard_and_v4_mapped_children_find_their_listener():
    any6 = listen("::", 443, cookie=3, family=V6)
    mapped = row(diag.TCP_ESTABLISHED, "::ffff:127.0.0.1", 443, raddr="::ffff:127.0.0.1", rport=1, family=V6)
    stray = row(diag.TCP_ESTABLISHED, "127.0.0.1", 9999, raddr="127.0.0.1", rport=2)
    att = attribute(tick([any6], children=[mapped, stray]))
    assert att.children_counts() == {key_of(any6): {"ESTABLISHED": 1}}  # the stray has no listener
    assert attribute(tick([any6])).children is None  # no full dump: unknown, not empty


def test_reuseport_members_get_their_children_by_the_kernels_link():
    """Two members of one address: each child row goes to the member the probes linked it to (by
    tuple, as the kernel took it at enqueue); a child without a link stays with the first member.
    The links are asked for once per tick, and never where no address is shared."""
    a, b = listen("127.0.0.1", 80, cookie=1, inode=101), listen("127.0.0.1", 80, cookie=2, inode=102)
    kids = [row(diag.TCP_ESTABLISHED, "127.0.0.1", 80, raddr="127.0.0.1", rport=p, cookie=20 + p) for p in (1, 2, 3)]
    cw = row(diag.TCP_CLOSE_WAIT, "127.0.0.1", 80, raddr="127.0.0.1", rport=4, cookie=30)
    links = {(NS, "ipv4", "127.0.0.1", 80, "127.0.0.1", 1): (NS, 102), (NS, "ipv4", "127.0.0.1", 80, "127.0.0.1", 4): (NS, 102)}
    calls = []

    def read_links():
        calls.append(1)
        return links, {}

    att = attribute(tick([a, b, cw], children=kids), read_links)
    assert att.children_counts() == {key_of(a): {"ESTABLISHED": 2}, key_of(b): {"ESTABLISHED": 1}}
    assert [parent for _, _, parent in att.close_wait] == [key_of(b)]
    assert len(calls) == 1
    calls.clear()
    alone = listen("127.0.0.1", 81, cookie=3, inode=103)
    kid = row(diag.TCP_ESTABLISHED, "127.0.0.1", 81, raddr="127.0.0.1", rport=5)
    assert attribute(tick([alone], children=[kid]), read_links).children_counts() == {key_of(alone): {"ESTABLISHED": 1}}
    assert calls == []


def test_children_between_dumps_move_per_member_by_listener_deltas():
    """A shared port's per-port deltas cannot be split; each member's own (by its inode) can."""
    from tcptop_q.sampler import children_between_dumps

    a, b = key_of(listen("127.0.0.1", 80, cookie=1)), key_of(listen("127.0.0.1", 80, cookie=2))
    at_dump = {a: {"ESTABLISHED": 2}, b: {"ESTABLISHED": 1}}
    lids = {a: (NS, 101), b: (NS, 102)}
    then = {(NS, 101): {"ESTABLISHED": 2}, (NS, 102): {"ESTABLISHED": 1}}
    now = {(NS, 101): {"ESTABLISHED": 1, "CLOSE_WAIT": 1}, (NS, 102): {"ESTABLISHED": 3}}
    port = {(NS, 80): {"SYN_RECV": 5}}  # a shared port: stands still
    out = children_between_dumps(at_dump, port, port, [a, b], then, now, lids)
    assert out == {a: {"ESTABLISHED": 1, "CLOSE_WAIT": 1}, b: {"ESTABLISHED": 3}}


def test_map_walk_fallback_yields_each_key_once():
    """Without batch lookup, bcc's items() walks get_next_key, which starts over when the key it
    stands on is deleted meanwhile: decode.items keeps one entry per key (the last value)."""
    import ctypes

    from tcptop_q.probes import decode

    class Table:
        def items_lookup_batch(self):
            raise OSError("no batch ops")

        def items(self):
            k = [ctypes.c_ulonglong(n) for n in (1, 2, 1, 2, 3)]
            return list(zip(k, (10, 20, 11, 21, 30), strict=True))

    got = decode.items(Table())
    assert [(decode.as_int(k), v) for k, v in got] == [(1, 11), (2, 21), (3, 30)]


# ------------------------------------------------------------------ overflows


def overflows(tracker: OverflowTracker, rows, counts, *, lo: int = 0, dt: float = 1.0, notes=None):
    """One tick of the tracker; `lo`: the netns' ListenOverflows (TcpExt) at that tick."""
    lr = [(key_of(r), r) for r in rows]
    return tracker.update(lr, {key_of(r): c for r, c in zip(rows, counts, strict=True)}, {NS: lo}, dt,
                          notes if notes is not None else [])


def test_overflows_count_from_the_live_baseline():
    t = OverflowTracker()
    k = key_of(listen("0.0.0.0", 80, cookie=1))
    # 100 sk_drops and 40 ListenOverflows before the probes went live: none counts.
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=100)], [BpfListenerCounts()], lo=40)[k] == (0, 0.0)
    # +3 SYN-path overflows (1 sk_drops each) +2 third-ACK overflows (2 each, 2 events) +1 filter
    # drop (1): +8 sk_drops, +5 ListenOverflows.
    counts = BpfListenerCounts(listen_overflow_drops=2, other_rx_drops=1)
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=108)], [counts], lo=45, dt=2.0)[k] == (5, 2.5)


def test_drops_that_are_not_overflows_never_count_as_overflows():
    """Syncookies off, SYN queue over 3/4 full: the kernel drops SYNs (sk_drops, ListenDrops)
    without ListenOverflows; TCP_DEFER_ACCEPT bare ACKs (+1 each, an event) the same."""
    t = OverflowTracker()
    k = key_of(listen("0.0.0.0", 80, cookie=1))
    overflows(t, [listen("0.0.0.0", 80, cookie=1)], [BpfListenerCounts()])
    got = overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=64)], [BpfListenerCounts(other_rx_drops=13)])[k]
    assert got == (0, 0.0)


def test_cookie_path_overflows_count_although_other_events_fire():
    """tcp_syncookies=2: a cookie third-ACK overflow adds 1 to sk_drops and has no event of its own,
    while the client's segments around it are freed with other reasons (no sk_drops)."""
    t = OverflowTracker()
    k = key_of(listen("0.0.0.0", 80, cookie=1))
    overflows(t, [listen("0.0.0.0", 80, cookie=1)], [BpfListenerCounts()])
    got = overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=3)], [BpfListenerCounts(other_rx_drops=2)], lo=3)[k]
    assert got[0] == 3


def test_overflows_never_decrease():
    t = OverflowTracker()
    k = key_of(listen("0.0.0.0", 80, cookie=1))
    overflows(t, [listen("0.0.0.0", 80, cookie=1)], [BpfListenerCounts()])
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=5)], [BpfListenerCounts()], lo=5)[k][0] == 5
    # A third-ACK event read before its second sk_drops increment: counted from the event;
    # the shares given before stay.
    third = [BpfListenerCounts(listen_overflow_drops=1)]
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=6)], third, lo=6)[k] == (6, 1.0)
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=7)], third, lo=6)[k] == (6, 0.0)


def test_a_listener_born_after_live_starts_at_zero_and_counts_every_overflow():
    t = OverflowTracker()
    old = listen("0.0.0.0", 80, cookie=1, drops=7)
    overflows(t, [old], [BpfListenerCounts()], lo=7)
    new = listen("0.0.0.0", 81, cookie=2, drops=4)
    got = overflows(t, [old, new], [BpfListenerCounts(), BpfListenerCounts()], lo=11)
    assert got[key_of(old)] == (0, 0.0)
    assert got[key_of(new)] == (4, 0.0)  # its sk_drops counted from its creation, after live


def test_a_recreated_listener_starts_over_and_a_gone_ones_overflows_are_not_inherited():
    t = OverflowTracker()
    lst = listen("0.0.0.0", 80, cookie=1)
    overflows(t, [lst], [BpfListenerCounts()])
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=9)], [BpfListenerCounts()], lo=9)[key_of(lst)][0] == 9
    t.prune(set())
    # Same key, new socket: its sk_drops restarted; 1 drop that is not an overflow (lo unchanged).
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=1)], [BpfListenerCounts()], lo=9)[key_of(lst)][0] == 0
    got = overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=2)], [BpfListenerCounts()], lo=10)
    assert got[key_of(lst)][0] == 1


def test_several_listeners_with_drops_exact_when_the_bounds_fit_else_a_note():
    t = OverflowTracker()
    a, b = listen("0.0.0.0", 80, cookie=1), listen("0.0.0.0", 81, cookie=2)
    zero = [BpfListenerCounts(), BpfListenerCounts()]
    overflows(t, [a, b], zero)
    notes: list[str] = []
    # a: 4 sk_drops, b: 2; the netns counted 6 overflows: every drop was one.
    got = overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=4), listen("0.0.0.0", 81, cookie=2, drops=2)],
                    zero, lo=6, notes=notes)
    assert (got[key_of(a)][0], got[key_of(b)][0], notes) == (4, 2, [])
    # 4 more sk_drops on each, 4 more overflows: which are which cannot be told. The new ones
    # are shared in proportion to the new drops (4:4 -> 2, 2) and said so; what each had stays.
    got = overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=8), listen("0.0.0.0", 81, cookie=2, drops=6)],
                    zero, lo=10, notes=notes)
    assert got[key_of(a)][0] + got[key_of(b)][0] <= 10
    assert (got[key_of(a)][0], got[key_of(b)][0]) == (6, 4)
    assert len(notes) == 1 and "across 2 listeners" in notes[0]


def test_an_earlier_listeners_overflows_are_never_shared_again():
    """A listener's earlier overflows stay its own when another one starts dropping (defer-accept
    ACKs, not overflows) and overflows once: the newcomer gets only the new one."""
    t = OverflowTracker()
    a, b = listen("0.0.0.0", 80, cookie=1), listen("0.0.0.0", 81, cookie=2)
    zero = [BpfListenerCounts(), BpfListenerCounts()]
    overflows(t, [a, b], zero)
    assert overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=5), b], zero, lo=5)[key_of(a)][0] == 5
    third = [BpfListenerCounts(), BpfListenerCounts(listen_overflow_drops=1, other_rx_drops=5)]
    got = overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=5), listen("0.0.0.0", 81, cookie=2, drops=7)],
                    third, lo=6)
    assert (got[key_of(a)][0], got[key_of(b)][0]) == (5, 1)


def test_a_netns_inode_reused_by_a_new_netns_starts_over():
    """The kernel reuses netns inode numbers: a new netns under an old one's number has its
    counters back at 0 and new listeners; its overflows are its own."""
    t = OverflowTracker()
    old = listen("0.0.0.0", 80, cookie=1, drops=5)
    overflows(t, [old], [BpfListenerCounts()], lo=50)
    overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=9)], [BpfListenerCounts()], lo=54)
    t.prune(set())
    new = listen("0.0.0.0", 80, cookie=7, drops=0)
    assert overflows(t, [new], [BpfListenerCounts()], lo=0)[key_of(new)][0] == 0
    got = overflows(t, [listen("0.0.0.0", 80, cookie=7, drops=3)], [BpfListenerCounts()], lo=3)
    assert got[key_of(new)][0] == 3


def test_kprobe_syn_overflows_are_taken_as_counted():
    t = OverflowTracker()
    lst = listen("0.0.0.0", 80, cookie=1)
    overflows(t, [lst], [BpfListenerCounts(syn_overflows=0)])
    got = overflows(t, [listen("0.0.0.0", 80, cookie=1, drops=50)], [BpfListenerCounts(syn_overflows=3)], lo=3)
    assert got[key_of(lst)][0] == 3


# ------------------------------------------------------------------- children


def test_children_unknown_before_the_first_dump_then_moved_by_deltas():
    c = ChildrenTracker()
    k = key_of(listen("0.0.0.0", 80, cookie=1))
    assert c.update(None, {(NS, 80): {"ESTABLISHED": 5}}, [k], {}) is None
    assert c.update({k: {"ESTABLISHED": 2}}, {(NS, 80): {"ESTABLISHED": 5}}, [k], {k: 1}) == {
        k: {"ESTABLISHED": 2, "CLOSE_WAIT": 1}
    }
    # Between dumps: +3 ESTABLISHED since the dump; CLOSE_WAIT from this tick's rows (gone).
    assert c.update(None, {(NS, 80): {"ESTABLISHED": 8}}, [k], {}) == {k: {"ESTABLISHED": 5}}
    # Deltas can take a state to zero: it disappears, never goes negative.
    assert c.update(None, {(NS, 80): {"ESTABLISHED": 0}}, [k], {}) == {k: {}}


def test_children_of_a_shared_port_keep_the_dump_counts():
    c = ChildrenTracker()
    a, b = key_of(listen("127.0.0.1", 80, cookie=1)), key_of(listen("10.0.0.5", 80, cookie=2))
    c.update({a: {"ESTABLISHED": 1}, b: {"ESTABLISHED": 4}}, {(NS, 80): {}}, [a, b], {})
    assert c.update(None, {(NS, 80): {"ESTABLISHED": 9}}, [a, b], {}) == {
        a: {"ESTABLISHED": 1}, b: {"ESTABLISHED": 4}
    }


# ----------------------------------------------------------------- BPF fields


def test_counter_field_is_none_without_its_hook_and_rates_need_an_interval():
    fn = counter_field("queued", "queued")
    r = listen("0.0.0.0", 80, cookie=1)
    now, before = BpfListenerCounts(queued=30), BpfListenerCounts(queued=10)
    assert fn(FieldInput(now, before, {}, r, 1.0)) == {"queued": None, "queued_rate": None}
    assert fn(FieldInput(now, before, {"queued": "tp"}, r, 0.0)) == {"queued": 30, "queued_rate": None}
    assert fn(FieldInput(now, before, {"queued": "tp"}, r, 4.0)) == {"queued": 30, "queued_rate": 5.0}
    assert fn(FieldInput(now, None, {"queued": "tp"}, r, 2.0))["queued_rate"] == 15.0


def test_every_field_function_fills_only_listener_fields():
    from dataclasses import fields

    from tcptop_q.model import Listener

    names = {f.name for f in fields(Listener)}
    inp = FieldInput(BpfListenerCounts(peak_accept_queue=2), None, {}, listen("0.0.0.0", 80, cookie=1), 1.0)
    for fn in LISTENER_BPF_FIELDS:
        out = fn(inp)
        assert out and set(out) <= names
        assert all(v is None for v in out.values())  # no hook: unknown, never 0


def test_peak_accept_queue_is_at_least_the_queue_now():
    inp = FieldInput(BpfListenerCounts(peak_accept_queue=2), None, {"queued": "tp"},
                     row(diag.TCP_LISTEN, "0.0.0.0", 80, rqueue=7), 1.0)
    merged = {}
    for fn in LISTENER_BPF_FIELDS:
        merged.update(fn(inp))
    assert merged["peak_accept_queue"] == 7


# -------------------------------------------------------------- reuse, netns


def test_reuse_cache_keeps_the_object_while_inputs_are_equal():
    cache: ReuseCache[object] = ReuseCache()
    first = cache.get("a", (1, "x"), object)
    cache.end_tick()
    assert cache.get("a", (1, "x"), object) is first
    cache.end_tick()
    assert cache.get("a", (2, "x"), object) is not first
    cache.end_tick()
    cache.end_tick()  # a tick without "a": forgotten
    assert cache.get("a", (2, "x"), object) is not first


def test_netns_rates_need_a_previous_tick_and_survive_a_counter_reset():
    before = tick([], mono=0.0, counters={"ListenOverflows": 10, "ListenDrops": 10})
    now = tick([], mono=2.0, counters={"ListenOverflows": 16, "ListenDrops": 4})
    assert netns_counters(before, None, 0.0)[0].rates == {}
    out = netns_counters(now, before, 2.0)[0]
    assert out.rates["ListenOverflows"] == 3.0
    assert out.rates["ListenDrops"] == 2.0  # went back (reset): counts from 0, never negative
    assert out.counters["ListenOverflows"] == 16


# --------------------------------------------------------------- whole build


class FakeBpf:
    """Only what the sampler reads of the probes; a real loader needs root (tests/kernel)."""

    state, error, notes = "live", None, ()
    hooks = {"queued": "tracepoint:sock:sk_data_ready"}

    def __init__(self) -> None:
        self.counts: dict[ListenerKey, BpfListenerCounts] = {}

    def read(self) -> BpfReading:
        return BpfReading(dict(self.counts), (), 0, 0.0, dict(self.hooks))

    def state_since(self, *args):
        return None


@pytest.fixture
def sampler():
    s = Sampler(bpf=FakeBpf(), all_netns=False)
    yield s
    s.close()


def build(s: Sampler, raw: RawTick):
    bpf = s.bpf.read()
    snap = s._build(raw, bpf, "live", None)
    s.prev = raw
    return snap


def test_build_attributes_sockets_and_reuses_unchanged_listeners(sampler):
    lo, other = listen("127.0.0.1", 8080, cookie=1), listen("10.0.0.5", 8080, cookie=2)
    cw = row(diag.TCP_CLOSE_WAIT, "10.0.0.5", 8080, raddr="10.0.0.9", rport=5, cookie=20, rqueue=3)
    est = row(diag.TCP_ESTABLISHED, "127.0.0.1", 8080, raddr="127.0.0.1", rport=6, cookie=21)
    sampler.bpf.counts = {key_of(lo): BpfListenerCounts(queued=4)}
    first = build(sampler, tick([lo, other, cw], mono=0.0, children=[est]))
    assert [c.listener for c in first.close_wait] == [key_of(other)]
    assert first.connections is not None
    assert {k: [c.listener for c in v] for k, v in first.connections.items()} == {key_of(lo): [key_of(lo)]}
    by_key = {lst.key: lst for lst in first.listeners}
    assert by_key[key_of(lo)].children == {"ESTABLISHED": 1, "CLOSE_WAIT": 0}
    assert by_key[key_of(other)].children == {"ESTABLISHED": 0, "CLOSE_WAIT": 1}
    assert by_key[key_of(lo)].queued == 4 and by_key[key_of(other)].queued == 0
    assert by_key[key_of(lo)].overflows == 0 and by_key[key_of(lo)].synack_retrans is None

    second = build(sampler, tick([lo, other, cw], mono=1.0))
    assert second.connections is None  # no dump this tick
    assert second.close_wait[0] is first.close_wait[0]
    # The second tick has an interval (rates appear): new objects; a third identical tick reuses both.
    third = build(sampler, tick([lo, other, cw], mono=2.0))
    assert [a is b for a, b in zip(second.listeners, third.listeners, strict=True)] == [True, True]
    assert third.listeners[0].queued_rate == 0.0


def test_build_without_bpf_leaves_bpf_fields_unknown(sampler):
    sampler.bpf = None
    snap = sampler._build(tick([listen("0.0.0.0", 80, cookie=1, drops=3)]), None, "off", None)
    lst = snap.listeners[0]
    assert lst.drops == 3 and lst.overflows is None and lst.queued is None and lst.children == {}
