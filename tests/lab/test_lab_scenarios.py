"""Every lab scenario produces the kernel effect it names, checked with the kernel's own tools
(nstat, ss inside its netns), and leaves no netns and no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.conftest import ROOT, tcpq

DURATION = 30.0
WAIT = 20.0


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def ours() -> set[str]:
    """Lab netns made by this test process (other suites may run concurrently)."""
    mine = (f"tq-lab-{os.getpid()}-", f"tq-labc-{os.getpid()}-")
    return {n for n in netns_names() if n.startswith(mine)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ss_rows(ns, *args: str) -> list[list[str]]:
    return [line.split() for line in ns.run(["ss", "-tanH", *args]).stdout.splitlines() if line.strip()]


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def listener(ns, port: int) -> dict:
    """Recv-Q, Send-Q and skmem drops of the listener on `port`, as `ss -ltnm` shows them."""
    out = ns.run(["ss", "-ltnmH", f"sport = :{port}"]).stdout
    m = re.search(r"^LISTEN\s+(\d+)\s+(\d+)\s+\S+.*\n\s+skmem:\(.*?\bd(\d+)", out, re.M)
    assert m, out
    return {"recvq": int(m.group(1)), "sendq": int(m.group(2)), "drops": int(m.group(3))}


def wait_for(what: str, check: Callable[[], object], timeout: float = WAIT) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"{what}: not seen within {timeout:g} s (last: {last!r})")


# ------------------------------------------------------------------ effects


def effect_no_accept(ns, info) -> None:
    wait_for("ListenOverflows > 0", lambda: ns.tcpext()["ListenOverflows"] > 0)
    wait_for("accept queue 6/5", lambda: listener(ns, 8080) if listener(ns, 8080)["recvq"] == 6 else None)
    assert listener(ns, 8080)["sendq"] == 5
    cw = wait_for("6 CLOSE_WAIT", lambda: (r := ss_rows(ns, "state", "close-wait")) and len(r) == 6 and r)
    assert all(int(r[0]) == 11 for r in cw)  # "helloworld" + FIN unread


def effect_client_closes(ns, info) -> None:
    rows = wait_for("client-side TIME_WAIT", lambda: ss_rows(ns, "state", "time-wait"))
    assert any(port_of(r[3]) == 8090 for r in rows)  # the peer is the server: the client waits
    assert not any(port_of(r[2]) == 8090 for r in rows), "the server should never be in TIME_WAIT"


def effect_server_closes(ns, info) -> None:
    rows = wait_for("server-side TIME_WAIT", lambda: [r for r in ss_rows(ns, "state", "time-wait")
                                                      if port_of(r[2]) == 8000])
    assert rows


def effect_ack_overflow(ns, info) -> None:
    wait_for("ListenOverflows > 0", lambda: ns.tcpext()["ListenOverflows"] > 0)
    ext = ns.tcpext()
    assert ext["TCPDeferAcceptDrop"] > 0  # C's bare ACK, the reason C stays a request sock
    assert listener(ns, 8081)["drops"] > 0


def effect_syn_flood_cookies(ns, info) -> None:
    wait_for("SYN cookies", lambda: (e := ns.tcpext())["TCPReqQFullDoCookies"] > 0 and e["SyncookiesSent"] > 0)
    # The request queue holds limit+1 too (inet_csk_reqsk_queue_is_full tests >).
    wait_for("SYN queue full (17 SYN_RECV)", lambda: len(ss_rows(ns, "state", "syn-recv")) == 16 + 1)
    assert ns.sysctl("net.ipv4.tcp_syncookies") == "1"
    assert info["client_netns"] in netns_names()


def effect_close_wait_leak(ns, info) -> None:
    def owned() -> list[str]:
        out = ns.run(["ss", "-tanpH", "state", "close-wait", "sport", "= :8082"]).stdout
        return [line for line in out.splitlines() if f"pid={info['server_pid']}," in line]

    first = wait_for("CLOSE_WAIT owned by the server", owned)
    wait_for("CLOSE_WAIT piling up", lambda: len(owned()) > len(first))  # type: ignore[arg-type]


def effect_slow_accept(ns, info) -> None:
    wait_for("accept queue > 0", lambda: listener(ns, 8083)["recvq"] > 0)
    wait_for("drops > 0", lambda: listener(ns, 8083)["drops"] > 0)
    assert ns.tcpext()["ListenOverflows"] > 0
    # The server keeps accepting (slowly): the queue is not stuck like no-accept.
    wait_for("TIME_WAIT from accepted connections", lambda: ss_rows(ns, "state", "time-wait"))


EFFECTS = {
    "no-accept": effect_no_accept,
    "client-closes": effect_client_closes,
    "server-closes": effect_server_closes,
    "ack-overflow": effect_ack_overflow,
    "syn-flood-cookies": effect_syn_flood_cookies,
    "close-wait-leak": effect_close_wait_leak,
    "slow-accept": effect_slow_accept,
}


def test_every_scenario_has_an_effect_test():
    from tcptop_q.lab.scenarios import SCENARIOS

    assert set(EFFECTS) == set(SCENARIOS)


@pytest.mark.parametrize("name", list(EFFECTS))
def test_scenario_effect_and_cleanup(root, name):
    from tcptop_q.lab.scenarios import run_scenario

    with run_scenario(name, DURATION) as (ns, info):
        assert info["inode"] == os.stat(f"/run/netns/{ns.name}").st_ino
        assert info["watch"][0] == f"tcpq-top --netns {ns.inode}"
        pids = ns.pids()
        assert info["server_pid"] in pids
        names = {ns.name, info.get("client_netns")} - {None}
        assert names == ours()
        EFFECTS[name](ns, info)
    assert ours() == set()
    assert not names & netns_names()
    assert [p for p in pids if alive(p)] == []


def test_unknown_name_and_bad_duration(root):
    from tcptop_q.lab.scenarios import run_scenario

    with pytest.raises(KeyError, match="unknown lab scenario"), run_scenario("nope", 5):
        pass
    for bad in (0, -1, float("nan"), 1e9):
        with pytest.raises(ValueError, match="duration"), run_scenario("no-accept", bad):
            pass
    assert ours() == set()


def test_exception_inside_the_block_still_cleans_up(root):
    from tcptop_q.lab.scenarios import run_scenario

    with pytest.raises(RuntimeError), run_scenario("syn-flood-cookies", 10) as (ns, info):
        pids = ns.pids()
        names = {ns.name, info["client_netns"]}
        raise RuntimeError("boom")
    assert ours() == set() and not names & netns_names()
    assert [p for p in pids if alive(p)] == []


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize("argv,needle", [
    (["lab"], "required"),
    (["lab", "run"], "required"),
    (["lab", "run", "nope"], "unknown scenario 'nope'"),
    (["lab", "run", "no-accept", "--duration", "x"], "number of seconds"),
    (["lab", "run", "no-accept", "--duration", "0"], "between 0 and"),
    (["lab", "run", "no-accept", "--duration", "nan"], "between 0 and"),
    (["lab", "frob"], "invalid choice"),
])
def test_cli_usage_errors_are_one_line_exit_2(argv, needle):
    proc = tcpq(*argv, timeout=30)
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcpq-top lab: ") and needle in lines[0], proc.stderr


def test_cli_list():
    proc = tcpq("lab", "list", timeout=30)
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == list(EFFECTS)
    assert all(len(line) <= 120 for line in proc.stdout.splitlines())


def test_cli_run_prints_where_to_look_and_ends_after_duration(root):
    proc = tcpq("lab", "run", "no-accept", "--duration", "2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"netns\s+(tq-lab-\S+) \(inode (\d+)\)", proc.stdout)
    assert m, proc.stdout
    assert f"tcpq-top --netns {m.group(2)}" in proc.stdout
    assert "netns and processes removed" in proc.stdout
    assert m.group(1) not in netns_names()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_cli_run_cleans_up_on_signals(root, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcptop_q", "lab", "run", "syn-flood-cookies", "--duration", "120", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert {info["netns"], info["client_netns"]} <= netns_names()
        pids = subprocess.run(["ip", "netns", "pids", info["netns"]], capture_output=True, text=True).stdout.split()
        pids += subprocess.run(["ip", "netns", "pids", info["client_netns"]], capture_output=True,
                               text=True).stdout.split()
        assert len(pids) >= 2
        time.sleep(0.5)
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert not {info["netns"], info["client_netns"]} & netns_names()
    assert [p for p in pids if alive(int(p))] == []


def test_demo_runs_every_scenario_in_one_netns_and_tcpq_top_sees_them(root):
    """What `--demo` shows: one netns, every scenario's listener, each with its symptom."""
    from tcptop_q.lab.scenarios import DEMO, SCENARIOS, run_demo

    assert set(DEMO) == set(SCENARIOS)
    with run_demo(40) as (ns, infos):
        assert {i["inode"] for i in infos} == {ns.inode}
        assert len({i["port"] for i in infos}) == len(infos)
        wait_for("syn queue full", lambda: len(ss_rows(ns, "state", "syn-recv")) == 17)
        wait_for("no-accept queue full", lambda: listener(ns, 8080)["recvq"] == 6)
        wait_for("slow-accept drops", lambda: listener(ns, 8083)["drops"] > 0)
        proc = tcpq("--once", "--json", "--no-bpf", "--interval", "0.5", "--netns", str(ns.inode))
        assert proc.returncode == 0, proc.stderr
        snap = json.loads(proc.stdout)
        by_port = {lst["lport"]: lst for lst in snap["listeners"]}
        assert set(by_port) == {i["port"] for i in infos}
        assert by_port[8080]["accept_queue"] == 6 and by_port[8080]["backlog"] == 5
        assert by_port[8443]["syn_queue"] == 17 and by_port[8443]["laddr"] == "198.18.0.1"
        assert by_port[8083]["drops"] > 0
        assert any(cw["lport"] == 8082 for cw in snap["close_wait"])
        (row,) = [n for n in snap["netns"] if n["inode"] == ns.inode]
        assert row["TCPReqQFullDoCookies"] > 0 and row["ListenOverflows"] > 0
        names = {ns.name, next(i["client_netns"] for i in infos if "client_netns" in i)}
    assert ours() == set() and not names & netns_names()


def test_lab_clean_removes_what_a_sigkilled_run_left(root):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcptop_q", "lab", "run", "syn-flood-cookies", "--duration", "60", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, start_new_session=True,
    )
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    names = {info["netns"], info["client_netns"]}
    proc.kill()  # SIGKILL: no cleanup can run
    proc.wait()
    assert names <= netns_names()
    pids = [int(p) for n in names for p in
            subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True).stdout.split()]
    assert pids  # the workers outlived their parent (they stop by themselves after --duration)
    out = tcpq("lab", "clean", timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(f"removed {n}" in out.stdout for n in names)
    assert not names & netns_names()
    assert [p for p in pids if alive(p)] == []
