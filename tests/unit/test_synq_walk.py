"""The tcp iterator's records (probes/synq.py) and how the sampler uses a walk (no root): a
SO_REUSEPORT member's SYN queue is the requests naming it; other listeners stay by address."""

from __future__ import annotations

import socket

from tcptop_q.probes import diag, layout, synq
from tcptop_q.probes.diag import DiagRow
from tcptop_q.sampler import NetnsRaw, RawTick, attribute

V4 = int(socket.AF_INET)
NS = 7


def rec(cookie: int, state: int, qlen: int = 0, rport: int = 0) -> bytes:
    family = V4 if state != synq.LISTEN else 0
    return layout.SYNQ_REC.pack(cookie, qlen, state, family, socket.htons(rport), socket.inet_aton("127.0.0.1"))


def row(state: int, lport: int, cookie: int, *, rport: int = 0, inode: int = 0) -> DiagRow:
    return DiagRow(V4, state, "127.0.0.1", lport, "127.0.0.1", rport, cookie, 0, 64, 0, inode, 0, 0)


def test_c_and_python_share_the_record_layout():
    text = layout.synq_c_header()
    assert "struct tq_synq_rec {" in text and f"== {layout.SYNQ_REC_SIZE}" in text
    assert layout.SYNQ_REC.size == layout.SYNQ_REC_SIZE == 32
    assert "struct tq_synq_rec" in synq.program_text({"TQ_SQ_OFF_STATE": 18})


def test_parse_counts_requests_per_listener_and_orphans():
    data = (rec(5, synq.LISTEN, 2) + rec(6, synq.LISTEN, 1) + rec(5, synq.NEW_SYN_RECV) * 2
            + rec(6, synq.NEW_SYN_RECV) + rec(6, synq.SYN_RECV) + rec(0, synq.NEW_SYN_RECV) + rec(9, synq.NEW_SYN_RECV))
    w = synq.parse(data + b"\1\2\3")  # a partial record at the end is not one
    assert w.qlen == {5: 2, 6: 1}
    assert w.requests == {5: 2, 6: 1}
    assert w.fastopen == {6: 1}
    assert w.orphans == 2  # listener cookie 0 (never generated) and a listener not in the walk


def test_members_get_their_own_requests_and_others_stay_by_address():
    rows = [row(diag.TCP_LISTEN, 80, 5, inode=1), row(diag.TCP_LISTEN, 80, 6, inode=2),
            row(diag.TCP_LISTEN, 81, 8, inode=3)]
    rows += [row(diag.TCP_SYN_RECV, 80, 100 + i, rport=1000 + i) for i in range(3)]  # the dump: by address
    rows += [row(diag.TCP_SYN_RECV, 81, 200 + i, rport=2000 + i) for i in range(2)]
    kids = [row(diag.TCP_SYN_RECV, 80, 100 + i, rport=1000 + i) for i in range(3)]  # the full child dump
    raw = RawTick(0.0, 0.0, {NS: NetnsRaw(NS, {}, {}, rows, kids)})
    walk = synq.parse(rec(5, synq.LISTEN, 1) + rec(6, synq.LISTEN, 2) + rec(8, synq.LISTEN, 2)
                      + rec(5, synq.NEW_SYN_RECV, rport=1002) + rec(6, synq.NEW_SYN_RECV, rport=1000)
                      + rec(6, synq.NEW_SYN_RECV, rport=1001) + rec(6, synq.SYN_RECV, rport=1003))
    assert walk.peers[(V4, "127.0.0.1", 1002)] == 5
    asked: list[set[int]] = []

    def walks(netns: set[int]):
        asked.append(netns)
        return {NS: walk}

    att = attribute(raw, None, walks)
    assert asked == [{NS}]
    by_cookie = {k.cookie: v for k, v in att.syn_queue.items()}
    assert by_cookie == {5: 1, 6: 2, 8: 2}
    assert {k.cookie: v for k, v in att.syn_recv.items()} == {5: 1, 6: 3, 8: 2}
    assert not att.synq_by_address
    assert att.children is not None
    assert sorted((r.rport, p.cookie) for _ns, r, p in att.children) == [(1000, 6), (1001, 6), (1002, 5)]

    old = attribute(raw, None, lambda _ns: {})  # no walk: by address, and the sampler notes it
    assert sorted(old.syn_queue.values()) == [2, 3] and old.synq_by_address


def test_no_shared_address_asks_for_no_walk():
    rows = [row(diag.TCP_LISTEN, 80, 5), row(diag.TCP_SYN_RECV, 80, 100, rport=1000)]
    raw = RawTick(0.0, 0.0, {NS: NetnsRaw(NS, {}, {}, rows)})

    def walks(_netns):
        raise AssertionError("walked a netns without a shared address")

    att = attribute(raw, None, walks)
    assert list(att.syn_queue.values()) == [1] and not att.synq_by_address
