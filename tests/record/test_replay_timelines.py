"""A recorded run of seed experiments 2 and 3 replays every socket's full timeline, client side
included (a client's CLOSE -> SYN_SENT is recorded with local port 0), equal to what the live
probes answered for the same socket in the same run; plus the matching rules on synthetic
transitions (no root)."""

from __future__ import annotations

import time

from tcptop_q.model import Transition
from tcptop_q.timeline import full_tuple, socket_timeline
from tests.conftest import need


def test_recorded_run_replays_every_socket_timeline(bpf, tmp_path):
    from tcptop_q.lab.scenarios import run_scenarios
    from tcptop_q.record import RecordingSource, ReplaySource
    from tcptop_q.source import Filters, LiveSource

    path = tmp_path / "seeds.tcpq.gz"
    with run_scenarios(["client-closes", "server-closes"], 60) as (_ns, infos):
        live = LiveSource(interval=0.5, filters=Filters(netns=infos[0]["inode"]), use_bpf=True, blocking_owners=True)
        source = RecordingSource(live, path)
        try:
            source.start_bpf()
            need(source.wait_bpf(90), f"BPF probes did not go live: {live.bpf_error}")
            snaps = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                snaps.append(source.sample())
                events = [ev for s in snaps for ev in s.events]
                closed = {ev.skaddr for ev in events if ev.new == "CLOSE" and ev.old in ("TIME_WAIT", "LAST_ACK")}
                if len(closed) >= 4 and len(snaps) >= 6:
                    break
                time.sleep(0.5)
            tuples = sorted({t for t in map(full_tuple, events) if t is not None})
            live_tls = {t: source.timeline(*t) for t in tuples}  # before close: the probes' own answer
        finally:
            source.close()
    assert tuples
    replay = ReplaySource(path)
    list(replay)  # to the last snapshot
    clients = 0
    for t in tuples:
        got = replay.timeline(*t)
        assert got == live_tls[t], t
        # A client socket (its remote port is a server's) whose life began after the probes went
        # live; one connected before that has no SYN_SENT to show, live or replayed.
        if t[5] in (8090, 8000) and any(e.new == "SYN_SENT" for e in live_tls[t]):
            clients += 1
            assert (got[0].old, got[0].new) == ("CLOSE", "SYN_SENT"), got
            assert got[0].lport == t[3]  # recorded with port 0, shown with the port it got
    assert clients >= 4
    servers = [live_tls[t] for t in tuples if t[3] in (8090, 8000)]
    assert any([(e.old, e.new) for e in tl][:2] == [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")]
               for tl in servers)


def tr(skaddr, old, new, lport=40000, rport=8090, laddr="127.0.0.1", raddr="127.0.0.1", t=0.0) -> Transition:
    return Transition(time=t, netns=1, skaddr=skaddr, family="ipv4", laddr=laddr, lport=lport, raddr=raddr,
                      rport=rport, old=old, new=new, ms_in_old=None, pid=1, comm="x")


def test_connect_before_the_port_is_known_belongs_to_the_socket():
    events = [tr(7, "CLOSE", "SYN_SENT", lport=0), tr(7, "SYN_SENT", "ESTABLISHED"),
              tr(8, "CLOSE", "SYN_SENT", lport=0, rport=9999),  # another socket, another server
              tr(7, "ESTABLISHED", "FIN_WAIT1"), tr(7, "FIN_WAIT1", "CLOSE", lport=0)]
    got = socket_timeline(events, 1, "ipv4", "127.0.0.1", 40000, "127.0.0.1", 8090)
    assert [(e.old, e.new) for e in got] == [("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"),
                                             ("ESTABLISHED", "FIN_WAIT1"), ("FIN_WAIT1", "CLOSE")]
    assert {e.lport for e in got} == {40000}


def test_a_recycled_address_is_a_new_socket():
    first = [tr(7, "CLOSE", "SYN_SENT", lport=0), tr(7, "SYN_SENT", "ESTABLISHED"), tr(7, "ESTABLISHED", "CLOSE")]
    second = [tr(7, "CLOSE", "SYN_SENT", lport=0, t=1.0), tr(7, "SYN_SENT", "ESTABLISHED", lport=40001, t=1.0)]
    got = socket_timeline(first + second, 1, "ipv4", "127.0.0.1", 40000, "127.0.0.1", 8090)
    assert got == [tr(7, "CLOSE", "SYN_SENT"), tr(7, "SYN_SENT", "ESTABLISHED"), tr(7, "ESTABLISHED", "CLOSE")]
    assert [e.lport for e in socket_timeline(first + second, 1, "ipv4", "127.0.0.1", 40001, "127.0.0.1", 8090)] == [
        40001, 40001]
    assert socket_timeline(first, 1, "ipv4", "127.0.0.1", 1, "127.0.0.1", 8090) == []
