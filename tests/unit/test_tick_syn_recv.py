"""children["SYN_RECV"] is this tick's count, whatever the last full dump said (no root)."""

from __future__ import annotations

from tcptop_q.model import ListenerKey
from tcptop_q.sampler import with_tick_syn_recv

A = ListenerKey(1, "ipv4", "0.0.0.0", 80, 7)
B = ListenerKey(1, "ipv4", "0.0.0.0", 81, 8)


def test_tick_count_replaces_the_dump_count():
    dumped = {A: {"ESTABLISHED": 6, "SYN_RECV": 6}, B: {"ESTABLISHED": 1}}
    assert with_tick_syn_recv(dumped, {B: 3}) == {A: {"ESTABLISHED": 6}, B: {"ESTABLISHED": 1, "SYN_RECV": 3}}
    assert dumped[A] == {"ESTABLISHED": 6, "SYN_RECV": 6}  # the tracker's own counts are not touched
