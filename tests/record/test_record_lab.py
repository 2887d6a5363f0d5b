"""Record a lab scenario from the real kernel, replay it as an unprivileged user, compare."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from tests.conftest import ROOT, need

REPLAY = (
    "import json, sys\n"
    "from tcptop_q.record import ReplaySource, snapshot_record_json\n"
    "src = ReplaySource(sys.argv[1])\n"
    "for snap in src:\n"
    "    print(json.dumps(snapshot_record_json(snap)))\n"
    "print(json.dumps({'timeline': [vars(t) for t in src.timeline(*json.loads(sys.argv[2]))]}))\n"
)


def test_record_lab_scenario_then_replay_unprivileged(root, tmp_path):
    from tcptop_q.lab.scenarios import run_scenario
    from tcptop_q.record import RecordingSource, snapshot_record_json
    from tcptop_q.source import Filters, LiveSource

    setpriv = shutil.which("setpriv")
    need(setpriv is not None, "needs setpriv (util-linux)")
    path = tmp_path / "lab.tcpq.gz"
    live = []
    with run_scenario("no-accept", 30) as (ns, info):
        source = RecordingSource(
            LiveSource(interval=0.2, filters=Filters(netns=info["inode"]), use_bpf=False, blocking_owners=True),
            path, argv=["test"],
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                snap = source.sample(children=True)
                live.append(snap)
                lst = [x for x in snap.listeners if x.lport == 8080]
                if len(live) >= 5 and lst and lst[0].accept_queue == 6 and lst[0].drops > 0 and len(snap.close_wait) == 6:
                    break
                time.sleep(0.2)
        finally:
            source.close()
        ext = ns.tcpext()
    assert len(live) >= 5
    last = live[-1]
    lst = next(x for x in last.listeners if x.lport == 8080)
    assert lst.accept_queue == 6 and lst.backlog == 5 and lst.pid == info["server_pid"]
    assert 0 < lst.drops <= ext["ListenDrops"]

    # A copy in /tmp readable by nobody, replayed with no privileges at all.
    copy = shutil.copy(path, "/tmp/" + path.name)
    try:
        shutil.chown(copy, "nobody")
        cw = last.close_wait[0]
        tuple_ = [cw.netns, cw.family, cw.laddr, cw.lport, cw.raddr, cw.rport]
        proc = subprocess.run(
            [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
             sys.executable, "-c", REPLAY, copy, json.dumps(tuple_)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"},
        )
    finally:
        subprocess.run(["rm", "-f", copy], check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    replayed, tail = lines[:-1], lines[-1]
    assert replayed == [json.loads(json.dumps(snapshot_record_json(s))) for s in live]
    # The numbers an SRE reads, one by one.
    for got, want in zip(replayed, live, strict=True):
        assert got["time"] == want.time
        want_l = {x.lport: x for x in want.listeners}
        for gl in got["listeners"]:
            wl = want_l[gl["lport"]]
            assert (gl["accept_queue"], gl["backlog"], gl["drops"], gl["drop_rate"], gl["pid"]) == (
                wl.accept_queue, wl.backlog, wl.drops, wl.drop_rate, wl.pid)
        assert [n["ListenOverflows"] for n in got["netns"]] == [n.counters["ListenOverflows"] for n in want.netns]
        assert len(got["close_wait"]) == len(want.close_wait)
    assert tail == {"timeline": []}  # no BPF in this recording: no feed, an empty timeline


def _bcc_ok() -> bool:
    try:
        import bcc  # noqa: F401
    except Exception:
        return False
    return True


def test_recorded_feed_gives_the_same_timelines_as_live(root, tmp_path):
    """With BPF live, the feed events go into the recording; replay rebuilds each connection's
    timeline from them, equal to what the live probes answer."""
    from tcptop_q.lab.scenarios import run_scenario
    from tcptop_q.record import RecordingSource, ReplaySource
    from tcptop_q.source import Filters, LiveSource

    need(_bcc_ok(), "needs bcc (python3-bpfcc) in this interpreter")
    path = tmp_path / "bpf.tcpq.gz"
    with run_scenario("client-closes", 60) as (_ns, info):
        live = LiveSource(interval=0.5, filters=Filters(netns=info["inode"]), use_bpf=True, blocking_owners=True)
        source = RecordingSource(live, path)
        try:
            source.start_bpf()
            need(source.wait_bpf(90), f"BPF probes did not go live: {live.bpf_error}")
            snaps = []
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                snaps.append(source.sample())
                time.sleep(0.5)
            events = [ev for s in snaps for ev in s.events]
            done = [ev for ev in events if ev.lport == 8090 and ev.new == "CLOSE"]
            assert done, "no complete server-side lifecycle recorded"
            ev = done[0]
            tuple_ = (ev.netns, ev.family, ev.laddr, ev.lport, ev.raddr, ev.rport)
            live_tl = source.timeline(*tuple_)
        finally:
            source.close()
    assert [(t.old, t.new) for t in live_tl][-3:] == [("ESTABLISHED", "CLOSE_WAIT"), ("CLOSE_WAIT", "LAST_ACK"),
                                                      ("LAST_ACK", "CLOSE")]
    replay = ReplaySource(path)
    replayed = list(replay)
    assert [s.events for s in replayed] == [s.events for s in snaps]
    assert replay.timeline(*tuple_) == [t for t in live_tl if t.time <= snaps[-1].time]
    assert all(s.sources.bpf for s in replayed)
