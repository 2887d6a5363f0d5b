"""SO_REUSEPORT groups and their imbalance: pure functions over synthetic Listeners (no root)."""

from __future__ import annotations

import pytest

from tcptop_q import reuseport
from tcptop_q.diagnosis import CRIT, WARN, diagnose, reuseport_finding
from tcptop_q.model import Listener, ListenerKey, Snapshot, Sources, snapshot_to_json

NS = 4026532000


def key(laddr="0.0.0.0", port=80, cookie=1, family="ipv4", netns=NS) -> ListenerKey:
    return ListenerKey(netns, family, laddr, port, cookie)


def member(cookie, *, pid=None, depth=0, backlog=128, queued_rate=None, drop_rate=0.0, group="g") -> Listener:
    return Listener(key=key(cookie=cookie), inode=1000 + cookie, pid=pid, comm="srv", accept_queue=depth,
                    backlog=backlog, syn_queue=0, drops=0, drop_rate=drop_rate, queued_rate=queued_rate,
                    reuseport_group=group)


def test_same_address_and_port_is_one_group():
    got = reuseport.assign([(key(cookie=c), 0, -1) for c in (1, 2, 3, 4)] + [(key(port=81, cookie=9), 0, -1)])
    assert set(got) == {key(cookie=c) for c in (1, 2, 3, 4)}  # port 81 is alone: no group
    assert len(set(got.values())) == 1


def test_dual_stack_pair_is_not_one_group():
    v4, v6 = key(cookie=1), key(laddr="::", family="ipv6", cookie=2)
    assert reuseport.assign([(v4, 0, -1), (v6, 0, 0)]) == {}


def test_v6only_splits_ipv6_members():
    a, b, c = (key(laddr="::", family="ipv6", cookie=n) for n in (1, 2, 3))
    got = reuseport.assign([(a, 0, 0), (b, 0, 1), (c, 0, 1)])
    assert set(got) == {b, c} and got[b].endswith("/v6only")


def test_bound_device_and_exact_address_split_groups():
    got = reuseport.assign([(key(cookie=1), 1, -1), (key(cookie=2), 2, -1), (key(laddr="127.0.0.1", cookie=3), 0, -1)])
    assert got == {}


def test_netns_splits_groups():
    assert reuseport.assign([(key(cookie=1), 0, -1), (key(cookie=2, netns=NS + 1), 0, -1)]) == {}


def test_imbalance_is_max_over_mean():
    assert reuseport.imbalance([10.0, 10.0, 10.0, 10.0]) == 1.0
    assert reuseport.imbalance([40.0, 0.0, 0.0, 0.0]) == 4.0
    assert reuseport.imbalance([30.0, 10.0]) == 1.5
    assert reuseport.imbalance([1.0, None]) is None  # unknown, never a guess
    assert reuseport.imbalance([0.0, 0.0]) is None  # nothing to compare


def test_group_imbalance_from_what_the_listeners_carry():
    members = [member(1, depth=0, queued_rate=47.0), *(member(c, depth=129, queued_rate=1.0) for c in (2, 3, 4))]
    (group,) = reuseport.groups(members)
    assert group.queued_imbalance == pytest.approx(47.0 / 12.5)
    assert group.fill_imbalance == pytest.approx(1.0 / 0.75)  # three of four members full
    assert group.full == 3
    top, share = group.busiest
    assert top.key.cookie == 1 and share == pytest.approx(0.94)
    unknown = reuseport.groups([member(1), member(2)])[0]  # no BPF: queued unknown
    assert unknown.queued_imbalance is None and unknown.busiest is None


def test_json_has_groups_and_member_ids():
    members = [member(c, queued_rate=1.0) for c in (3, 1, 2)] + [member(9, group=None)]
    snap = Snapshot(time=0.0, interval=1.0, kernel="k", hostname="h", sources=Sources(netlink=True, bpf=False),
                    netns=[], listeners=members, close_wait=[])
    out = snapshot_to_json(snap)
    assert [lst["reuseport_group"] for lst in out["listeners"]] == ["g", "g", "g", None]
    assert out["reuseport_groups"] == [{
        "id": "g", "netns": NS, "family": "ipv4", "laddr": "0.0.0.0", "lport": 80, "members": [1, 2, 3],
        "queued_imbalance": 1.0, "fill_imbalance": None, "full_members": 0,
    }]


def test_diagnosis_names_the_imbalanced_group():
    members = [member(1, pid=4242, queued_rate=47.0), *(member(c, depth=129, queued_rate=1.0, drop_rate=3.0)
                                                       for c in (2, 3, 4))]
    finding = reuseport_finding(members)
    assert finding is not None and finding.severity == CRIT
    assert "member pid 4242 takes 94 % of connections, 3 members' queues are full" in finding.text
    # every member's screen says it, the idle ones included
    assert finding in diagnose(members[0], group=members)


def test_diagnosis_quiet_for_a_balanced_group():
    members = [member(c, queued_rate=10.0 + c) for c in (1, 2, 3, 4)]
    assert reuseport_finding(members) is None
    assert reuseport_finding(members[:1]) is None
    full_no_drops = [member(1, queued_rate=0.0), member(2, depth=129, queued_rate=0.0)]
    finding = reuseport_finding(full_no_drops)
    assert finding is not None and finding.severity == WARN and "1 member's queue is full" in finding.text
