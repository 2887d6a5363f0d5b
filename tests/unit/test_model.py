"""Pure functions: attribution, overflow formula, rates, sort, safe text, netstat parsing."""

from __future__ import annotations

import pytest

from tcptop_q import model
from tcptop_q.model import BpfListenerCounts, Listener, ListenerKey
from tcptop_q.probes.netstat import parse_netstat
from tcptop_q.sampler import _listener_index, owner_listener


def key(laddr: str, port: int, fam: str = "ipv4", ns: int = 1, cookie: int = 0) -> ListenerKey:
    return ListenerKey(ns, fam, laddr, port, cookie)


def test_children_go_to_the_exact_address_before_the_wildcard():
    exact, wild, v6wild = key("127.0.0.2", 80), key("0.0.0.0", 80), key("::", 80, "ipv6")
    index = _listener_index([(exact, None), (wild, None), (v6wild, None)])
    assert owner_listener(index, 1, "ipv4", "127.0.0.2", 80) == exact
    assert owner_listener(index, 1, "ipv4", "127.0.0.9", 80) == wild
    assert owner_listener(index, 1, "ipv6", "::1", 80) == v6wild
    # a v4-mapped child of a dual-stack socket: the v4 listener on that address wins
    assert owner_listener(index, 1, "ipv6", "::ffff:7f00:2", 80) == exact
    assert owner_listener(index, 2, "ipv4", "127.0.0.2", 80) is None  # other netns
    assert owner_listener(index, 1, "ipv4", "127.0.0.2", 81) is None


def test_v4_mapped_child_falls_back_to_the_v6_wildcard():
    v6wild = key("::", 443, "ipv6")
    index = _listener_index([(v6wild, None)])
    assert owner_listener(index, 1, "ipv6", "::ffff:7f00:1", 443) == v6wild


def test_rate():
    assert model.rate(30, 10, 2.0) == 10.0
    assert model.rate(None, 10, 2.0) is None
    assert model.rate(5, None, 1.0) is None
    assert model.rate(3, 10, 1.0) == 3.0  # counter reset: the new socket's count
    assert model.rate(1, 0, 0) is None


def lst(port: int, ovf: float | None, drop: float, aq: int = 0, bl: int = 10) -> Listener:
    return Listener(key("0.0.0.0", port), 1, None, None, aq, bl, 0, 0, drop, overflow_rate=ovf)


def test_sort_worst_first_unknown_last_ties_by_drop_rate():
    a, b, c, d = lst(1, 5.0, 0.0), lst(2, None, 9.0), lst(3, 5.0, 3.0), lst(4, 0.0, 0.0, aq=9)
    assert [x.lport for x in model.sort_listeners([a, b, c, d])] == [3, 1, 4, 2]
    assert [x.lport for x in model.sort_listeners([a, b, c, d], reverse=True)] == [2, 4, 1, 3]
    assert [x.lport for x in model.sort_listeners([a, b, c, d], "drop_rate")] == [2, 3, 4, 1]  # tie: fuller queue first
    with pytest.raises(ValueError):
        model.sort_listeners([a], "nope")


def test_safe_text_makes_terminal_controls_inert():
    hostile = "evil\x1b]0;pwned\x07\x1b[2J\x9b31m\r\n" + "x" * 500
    out = model.safe_text(hostile, 40)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in out)
    assert out.startswith("evil\\x1b]0;pwned\\x07") and len(out) == 40 and out.endswith("…")
    assert model.safe_text(None) == "-"


def test_parse_netstat_reads_only_tcpext():
    text = (
        "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n"
        "TcpExt: 3 17 19\n"
        "IpExt: InNoRoutes ListenDrops\n"
        "IpExt: 1 99\n"
    )
    assert parse_netstat(text) == {"SyncookiesSent": 3, "ListenOverflows": 17, "ListenDrops": 19}


def test_children_between_dumps_moves_dump_counts_by_bpf_deltas():
    from tcptop_q.sampler import children_between_dumps

    a, b, b2 = key("0.0.0.0", 80), key("127.0.0.1", 81), key("127.0.0.2", 81)
    at_dump = {a: {"ESTABLISHED": 3}, b: {"CLOSE_WAIT": 1}}
    then = {(1, 80): {"ESTABLISHED": 2}, (1, 81): {"CLOSE_WAIT": 5}}
    now = {(1, 80): {"ESTABLISHED": 1, "CLOSE_WAIT": 4}, (1, 81): {"CLOSE_WAIT": 9}}
    out = children_between_dumps(at_dump, then, now, [a, b])
    assert out[a] == {"ESTABLISHED": 2, "CLOSE_WAIT": 4}  # one moved ESTABLISHED -> CLOSE_WAIT x4
    assert out[b] == {"CLOSE_WAIT": 5}
    # two listeners on one port in one netns: deltas cannot be split, the dump stands
    out = children_between_dumps(at_dump, then, now, [a, b, b2])
    assert out[b] == {"CLOSE_WAIT": 1} and out[b2] == {}
    assert children_between_dumps(at_dump, then, None, [a]) == {a: {"ESTABLISHED": 3}, b: {"CLOSE_WAIT": 1}}


def test_counts_since_a_baseline():
    from tcptop_q.sampler import counts_since

    now = BpfListenerCounts(queued=9, listen_overflow_drops=3, other_rx_drops=2, syn_overflows=7)
    base = BpfListenerCounts(queued=4, listen_overflow_drops=1, other_rx_drops=2, syn_overflows=5)
    out = counts_since(now, base)
    assert (out.listen_overflow_drops, out.other_rx_drops, out.syn_overflows) == (2, 0, 2)
    assert counts_since(now, None) is now
    assert counts_since(BpfListenerCounts(), BpfListenerCounts()).syn_overflows is None


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_batch_and_tui_escape_the_same_bidi_and_format_controls():
    from tcptop_q.widgets.text import inert

    hostile = "nginx" + BIDI + "\u200b\ufeffgnp.exe"
    batch, tui = model.safe_text(hostile, 400), inert(hostile)
    assert batch == tui  # one function for both
    assert not any(ch in batch for ch in BIDI + "\u200b\ufeff")
    assert "\\u202e" in batch and "\\u061c" in batch and batch.startswith("nginx")
    assert model.safe_text("servér ✓") == "servér ✓"  # printable non-ASCII stays as it is
