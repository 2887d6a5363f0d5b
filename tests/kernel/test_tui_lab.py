"""The real TUI (headless, Pilot) over the real kernel, against the lab scenarios: the
diagnosis names the cause the kernel's own accounting (ss inside the netns) shows."""

from __future__ import annotations

import re
import time

from tcptop_q.app import TcpqTopApp
from tcptop_q.screens.closewait import CloseWaitScreen, group_close_wait
from tcptop_q.screens.listener import ListenerScreen
from tcptop_q.source import Filters, LiveSource
from tests.ui.helpers import wait_for


def ss_close_wait(ns, port: int) -> tuple[int, int]:
    """(never accepted, accepted) CLOSE_WAIT children of :port, by ss's own ino field."""
    out = ns.run(["ss", "-tanepH", "state", "close-wait", f"sport = :{port}"]).stdout
    inos = [int(m.group(1)) for m in re.finditer(r"\bino:(\d+)", out)]
    return sum(1 for i in inos if i == 0), sum(1 for i in inos if i != 0)


def ss_syn_recv(ns, port: int) -> int:
    out = ns.run(["ss", "-tanH", "state", "syn-recv", f"sport = :{port}"]).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def app_for(inode: int) -> TcpqTopApp:
    source = LiveSource(interval=0.5, filters=Filters(netns=inode), use_bpf=False)
    return TcpqTopApp(source)


def listener_key(app, port: int):
    snap = app.snapshot
    if snap is None:
        return None
    return next((lst.key for lst in snap.listeners if lst.key.lport == port), None)


async def test_slow_acceptor_close_wait_is_queued_not_leaked(root):
    from tcptop_q.lab.scenarios import run_scenarios

    with run_scenarios(["slow-accept", "close-wait-leak"], 60) as (ns, infos):
        slow = next(i for i in infos if i["scenario"] == "slow-accept")
        leak = next(i for i in infos if i["scenario"] == "close-wait-leak")
        deadline = time.monotonic() + 40
        while ss_close_wait(ns, slow["port"])[0] < 3 or ss_close_wait(ns, leak["port"])[1] < 5:
            assert time.monotonic() < deadline, "the scenarios never built their CLOSE_WAIT piles"
            time.sleep(0.2)
        app = app_for(ns.inode)
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_for(pilot, lambda: listener_key(app, slow["port"]) is not None
                           and listener_key(app, leak["port"]) is not None, 20, "both listeners")
            app.open_listener(listener_key(app, slow["port"]))
            # owners are resolved off the sampling path: wait until the owner is known too
            await wait_for(pilot, lambda: isinstance(app.screen, ListenerScreen)
                           and f"closed by the peer before pid {slow['server_pid']}" in app.screen.diagnosis_text,
                           30, "slow-accept diagnosis")
            text = app.screen.diagnosis_text
            assert f"before pid {slow['server_pid']}" in text
            assert "never calls close()" not in text and "leaked" not in text
            await pilot.press("escape")
            app.open_listener(listener_key(app, leak["port"]))
            await wait_for(pilot, lambda: isinstance(app.screen, ListenerScreen)
                           and app.screen.key.lport == leak["port"]
                           and f"pid {leak['server_pid']}" in app.screen.diagnosis_text
                           and "never calls close()" in app.screen.diagnosis_text, 30, "leak diagnosis")
            assert f"pid {leak['server_pid']}" in app.screen.diagnosis_text
            await pilot.press("escape")
            await pilot.press("c")
            assert isinstance(app.screen, CloseWaitScreen)
            groups = {g.pid: g for g in group_close_wait(app.snapshot.close_wait)}
            never, accepted = ss_close_wait(ns, slow["port"])
            slow_g = groups[slow["server_pid"]]
            # the slow acceptor's CLOSE_WAIT children are queued, not held (ss: ino 0)
            assert slow_g.queued >= 1 and never >= 1
            assert slow_g.count <= accepted + 2  # held only what it accepted (moves between reads)
            assert groups[leak["server_pid"]].count >= 5 and groups[leak["server_pid"]].queued == 0


async def test_netns_syncookies_blame_only_the_flooded_listener(root):
    from tcptop_q.lab.scenarios import run_scenarios

    with run_scenarios(["syn-flood-cookies", "close-wait-leak"], 60) as (ns, infos):
        flood = next(i for i in infos if i["scenario"] == "syn-flood-cookies")
        quiet = next(i for i in infos if i["scenario"] == "close-wait-leak")
        deadline = time.monotonic() + 30
        while ss_syn_recv(ns, flood["port"]) <= flood["backlog"]:
            assert time.monotonic() < deadline, "the SYN queue never filled"
            time.sleep(0.2)
        app = app_for(ns.inode)
        async with app.run_test(size=(160, 48)) as pilot:

            def cookies_now() -> bool:
                snap = app.snapshot
                return snap is not None and any(
                    n.rates.get("SyncookiesSent", 0) + n.rates.get("TCPReqQFullDoCookies", 0) > 0
                    for n in snap.netns)

            await wait_for(pilot, lambda: listener_key(app, quiet["port"]) is not None and cookies_now(),
                           20, "syncookies in the netns")
            app.open_listener(listener_key(app, quiet["port"]))
            await wait_for(pilot, lambda: isinstance(app.screen, ListenerScreen)
                           and "this netns sends syncookies" in app.screen.diagnosis_text, 20, "netns line")
            lst = app.listener(app.screen.key)
            assert lst is not None and lst.syn_queue == 0 and ss_syn_recv(ns, quiet["port"]) == 0
            assert "the kernel is answering with syncookies" not in app.screen.diagnosis_text
            await pilot.press("escape")
            app.open_listener(listener_key(app, flood["port"]))
            await wait_for(pilot, lambda: isinstance(app.screen, ListenerScreen)
                           and app.screen.key.lport == flood["port"]
                           and "the kernel is answering with syncookies" in app.screen.diagnosis_text,
                           20, "flooded listener's diagnosis")
            assert "▲" in app.screen.diagnosis_text.split("\n")[0] or "✖" in app.screen.diagnosis_text


def test_batch_replay_prints_as_many_reports_as_recorded(labns, tmp_path):
    from tests.conftest import tcpq

    labns.serve(addr="127.0.0.1", port=8090, backlog=8, mode="accept-hold")
    path = tmp_path / "rec.gz"
    live = tcpq("--batch", "-n", "3", "-d", "0.2", "--no-bpf", "--netns", str(labns.inode), "--record", str(path))
    assert live.returncode == 0, live.stderr
    printed = [line for line in live.stdout.splitlines() if line.startswith("tcpq-top ")]
    assert len(printed) == 3
    replay = tcpq("--batch", "--replay", str(path))
    assert replay.returncode == 0, replay.stderr
    assert len([line for line in replay.stdout.splitlines() if line.startswith("tcpq-top ")]) == 3
    assert "127.0.0.1:8090" in replay.stdout


def test_missing_netns_is_one_line_and_exit_2(labns):
    from tests.conftest import tcpq

    missing = 12345
    r = tcpq("--once", "--no-bpf", "--netns", str(missing))
    assert r.returncode == 2 and r.stdout == ""
    # the wording of cli._pick_netns (netns names): one line naming what --netns takes
    assert r.stderr.strip() == (f"tcpq-top: --netns {missing}: no such network namespace on this host "
                                "(give an inode, a name from the NETNS column, or SOURCE:PREFIX)")
    ok = tcpq("--once", "--no-bpf", "-i", "0.1", "--netns", str(labns.inode))  # one that exists is fine
    assert ok.returncode == 0, ok.stderr


def test_drop_reasons_name_the_third_ack_overflow(root, btf_required):
    """ack-overflow: third ACKs meet a full accept queue; the kernel frees them with reason
    TCP_LISTEN_OVERFLOW, charged to the listener (JSON drop_reasons, since live)."""
    import json

    from tcptop_q.lab.scenarios import run_scenario
    from tests.conftest import tcpq

    with run_scenario("ack-overflow", 90) as (ns, info):
        r = tcpq("--once", "--json", "-i", "3", "--netns", str(ns.inode), timeout=150)
        assert r.returncode == 0, r.stderr
        after = _nstat(ns, "TcpExtListenOverflows")
    snap = json.loads(r.stdout)
    lst = next(x for x in snap["listeners"] if x["lport"] == info["port"])
    reasons = lst["drop_reasons"]
    assert reasons is not None, snap["sources"]
    assert reasons.get("TCP_LISTEN_OVERFLOW", 0) >= 1
    # never more than the kernel's own count of overflows in this netns (since it was made)
    assert reasons["TCP_LISTEN_OVERFLOW"] <= after


def _nstat(ns, name: str) -> int:
    out = ns.run(["nstat", "-az", name]).stdout
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            return int(parts[1])
    raise AssertionError(out)
