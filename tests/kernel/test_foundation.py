"""`tcpq-top --once --json` against the kernel's own accounting (ss, nstat) in a private netns."""

from __future__ import annotations

import json
import math
import re

from tests.conftest import tcpq


def once(*args: str) -> dict:
    proc = tcpq("--once", "--json", "--no-bpf", "--interval", "0.3", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ss_listeners(ns) -> list[dict]:
    """LISTEN rows from `ss -ltnmH` inside the netns: Recv-Q, Send-Q, local, skmem drops."""
    out = ns.run(["ss", "-ltnmH"]).stdout
    rows = []
    for head, mem in re.findall(r"^(LISTEN.*)\n\s+skmem:\((.*)\)", out, re.M):
        fields = head.split()
        local = fields[3]
        addr, port = local.rsplit(":", 1)
        drops = int(re.search(r"(?:^|,)d(\d+)", mem).group(1))
        rows.append({"recvq": int(fields[1]), "sendq": int(fields[2]), "addr": addr.strip("[]"), "port": int(port), "d": drops})
    return rows


def ss_state(ns, state: str) -> list[dict]:
    out = ns.run(["ss", "-tnH", "-p", "state", state]).stdout
    rows = []
    for line in out.splitlines():
        f = line.split()
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        rows.append({"recvq": int(f[0]), "sendq": int(f[1]), "local": f[2], "peer": f[3], "pids": pids})
    return rows


def find(listeners: list[dict], port: int, laddr: str | None = None) -> dict:
    hits = [lst for lst in listeners if lst["lport"] == port and (laddr is None or lst["laddr"] == laddr)]
    assert len(hits) == 1, f"expected one listener on {laddr}:{port}, got {hits}"
    return hits[0]


def test_seed_experiment_1_matches_ss_and_nstat(labns):
    """listen(5), never accept(); 10 clients connect, send helloworld, close (seed experiment 1)."""
    server = labns.serve(addr="0.0.0.0", port=8080, backlog=5, mode="no-accept")
    before = labns.tcpext()
    connected = labns.clients(addr="127.0.0.1", port=8080, count=10, connect_timeout=0.3, gap=0.05)
    assert connected == 6  # backlog + 1: sk_acceptq_is_full() tests >
    after = labns.tcpext()
    snap = once("--netns", str(labns.inode))

    ss_l = ss_listeners(labns)
    assert len(ss_l) == 1
    lst = find(snap["listeners"], 8080)
    assert lst["netns"] == labns.inode
    assert (lst["family"], lst["laddr"]) == ("ipv4", "0.0.0.0")
    assert lst["accept_queue"] == ss_l[0]["recvq"] == 6
    assert lst["backlog"] == ss_l[0]["sendq"] == 5
    assert lst["pid"] == server.pid and lst["comm"].startswith("python")
    # SYN-path overflows only: sk_drops == ListenDrops delta == ListenOverflows delta.
    overflows = after["ListenOverflows"] - before["ListenOverflows"]
    assert overflows > 0
    assert lst["drops"] == ss_l[0]["d"] == after["ListenDrops"] - before["ListenDrops"] == overflows
    ns_row = next(n for n in snap["netns"] if n["inode"] == labns.inode)
    assert ns_row["ListenOverflows"] == after["ListenOverflows"]
    assert ns_row["ListenDrops"] == after["ListenDrops"]
    # Six queued children, all CLOSE_WAIT with "helloworld" + FIN = 11 bytes unread.
    ss_cw = ss_state(labns, "close-wait")
    assert len(ss_cw) == 6 and all(r["recvq"] == 11 for r in ss_cw)
    cws = [cw for cw in snap["close_wait"] if cw["lport"] == 8080]
    assert len(cws) == 6
    assert sorted(cw["rport"] for cw in cws) == sorted(int(r["peer"].rsplit(":", 1)[1]) for r in ss_cw)
    for cw in cws:
        assert cw["recv_q"] == 11
        assert cw["laddr"] == "127.0.0.1" and cw["raddr"] == "127.0.0.1"
        assert cw["pid"] == server.pid  # still queued: the listener's process will own it
        assert cw["age_s"] is None  # without BPF nobody saw the transition: unknown, not 0
    assert lst["children"] == {"ESTABLISHED": 0, "CLOSE_WAIT": 6}
    assert lst["syn_queue"] == 0
    # No BPF asked for: the fields it would give are null, never 0.
    assert snap["sources"] == {**snap["sources"], "netlink": True, "bpf": False}
    assert snap["sources"]["bpf_error"]
    for key in ("overflows", "overflow_rate", "synack_retrans", "accepts", "peak_accept_queue"):
        assert lst[key] is None


def test_drop_rate_is_per_second_over_the_interval(labns):
    labns.serve(addr="127.0.0.1", port=8081, backlog=1, mode="no-accept")
    labns.clients(addr="127.0.0.1", port=8081, count=2, connect_timeout=0.3, gap=0.02)
    # Clients that keep retrying SYNs while tcpq-top samples: drops rise during the interval.
    retrier = labns.spawn(
        [*__import__("sys").executable.split(), "-m", "tcptop_q.lab.worker", "clients",
         "--addr", "127.0.0.1", "--port", "8081", "--count", "3", "--connect-timeout", "4", "--gap", "0"]
    )
    try:
        proc = tcpq("--once", "--json", "--no-bpf", "--interval", "2", "--netns", str(labns.inode))
        snap = json.loads(proc.stdout)
        lst = find(snap["listeners"], 8081)
        # SYN retries at 1 s and 3 s: during a 2 s window at least one retry lands.
        assert lst["drop_rate"] > 0 and math.isfinite(lst["drop_rate"])
        assert 0 < snap["interval"] < 3
    finally:
        retrier.terminate()
        retrier.wait()


def test_somaxconn_clamps_the_backlog(labns):
    assert labns.sysctl("net.core.somaxconn", "16") == "16"  # per netns: the host's value is untouched
    labns.serve(addr="127.0.0.1", port=8082, backlog=100, mode="no-accept")
    snap = once("--netns", str(labns.inode))
    lst = find(snap["listeners"], 8082)
    assert lst["backlog"] == ss_listeners(labns)[0]["sendq"] == 16
    ns_row = next(n for n in snap["netns"] if n["inode"] == labns.inode)
    assert ns_row["sysctls"]["somaxconn"] == 16


def test_ipv6_loopback_listener(labns):
    labns.serve(addr="::1", port=8083, backlog=3, mode="no-accept")
    assert labns.clients(addr="::1", port=8083, count=2, connect_timeout=0.3) == 2
    snap = once("--netns", str(labns.inode))
    lst = find(snap["listeners"], 8083)
    assert (lst["family"], lst["laddr"]) == ("ipv6", "::1")
    ss_l = ss_listeners(labns)[0]
    assert lst["accept_queue"] == ss_l["recvq"] == 2 and lst["backlog"] == ss_l["sendq"] == 3
    assert lst["children"] == {"ESTABLISHED": 0, "CLOSE_WAIT": 2}
    assert all(cw["laddr"] == "::1" and cw["recv_q"] == 11 for cw in snap["close_wait"])


def test_dual_stack_wildcard_owns_v4_mapped_children(labns):
    """A [::]:port listener accepts IPv4 clients as v4-mapped IPv6 children."""
    server = labns.serve(addr="::", port=8084, backlog=10, mode="accept-hold")
    labns.clients(addr="127.0.0.1", port=8084, count=3, payload="", hold=0)
    labns.clients(addr="::1", port=8084, count=2, payload="")
    snap = once("--netns", str(labns.inode))
    lst = find(snap["listeners"], 8084)
    assert lst["laddr"] == "::"
    ss_cw = ss_state(labns, "close-wait")
    assert lst["children"].get("CLOSE_WAIT") == len(ss_cw) == 5
    cws = snap["close_wait"]
    assert sorted(cw["laddr"] for cw in cws) == sorted(["::ffff:7f00:1"] * 3 + ["::1"] * 2)
    # Accepted sockets have inodes: owner found through /proc/<pid>/fd, as ss -p sees it.
    assert all(cw["inode"] != 0 and cw["pid"] == server.pid for cw in cws)
    assert all(server.pid in r["pids"] for r in ss_cw)


def test_listener_in_another_netns_seen_from_the_host(labns):
    labns.serve(addr="127.0.0.1", port=8085, backlog=7, mode="no-accept")
    proc = tcpq("--once", "--json", "--no-bpf", "--interval", "0.2", "--port", "8085")
    snap = json.loads(proc.stdout)
    mine = [lst for lst in snap["listeners"] if lst["netns"] == labns.inode]
    assert len(mine) == 1 and mine[0]["backlog"] == 7
    assert labns.inode in {n["inode"] for n in snap["netns"]}
    stat = labns.run(["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout.strip()
    assert int(stat) == labns.inode


def test_batch_prints_a_header_and_a_row_per_listener_in_80_columns(labns):
    labns.serve(addr="127.0.0.1", port=8086, backlog=5, mode="no-accept")
    labns.clients(addr="127.0.0.1", port=8086, count=7, connect_timeout=0.2, gap=0.02)
    proc = tcpq("--batch", "-n", "2", "-d", "0.2", "--no-bpf", "--netns", str(labns.inode))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("tcpq-top ") for line in lines) == 2
    rows = [line for line in lines if line.startswith("127.0.0.1:8086")]
    assert len(rows) == 2 and all(" 6/5 " in row for row in rows)
    assert all(len(line) <= 80 for line in lines)
    assert "\x1b" not in proc.stdout


CONTRACT_LISTENER = {
    "netns": int, "family": str, "laddr": str, "lport": int, "inode": int,
    "pid": (int, type(None)), "comm": (str, type(None)), "accept_queue": int, "backlog": int,
    "syn_queue": int, "drops": int, "drop_rate": float, "overflows": (int, type(None)),
    "overflow_rate": (float, type(None)), "synack_retrans": (int, type(None)),
    "accepts": (int, type(None)), "peak_accept_queue": (int, type(None)), "children": dict,
}
CONTRACT_CLOSE_WAIT = {
    "netns": int, "laddr": str, "lport": int, "raddr": str, "rport": int, "inode": int,
    "pid": (int, type(None)), "comm": (str, type(None)), "recv_q": int, "age_s": (float, type(None)),
}
CONTRACT_NETNS = {
    "inode": int, "ListenOverflows": int, "ListenDrops": int, "TCPReqQFullDrop": int,
    "TCPReqQFullDoCookies": int, "SyncookiesSent": int,
}


def check_types(obj: dict, contract: dict, where: str) -> None:
    for name, kind in contract.items():
        assert name in obj, f"{where}: missing {name}"
        assert isinstance(obj[name], kind) and not (kind is int and isinstance(obj[name], bool)), (
            f"{where}.{name} = {obj[name]!r} is not {kind}"
        )


def test_json_follows_the_contract(labns):
    labns.serve(addr="127.0.0.1", port=8087, backlog=2, mode="no-accept")
    labns.clients(addr="127.0.0.1", port=8087, count=4, connect_timeout=0.2)
    snap = once("--netns", str(labns.inode))
    assert snap["schema"] == "tcpq-top.snapshot/1"
    assert isinstance(snap["time"], float) and isinstance(snap["interval"], float)
    assert isinstance(snap["kernel"], str) and snap["kernel"] == __import__("os").uname().release
    src = snap["sources"]
    assert isinstance(src["netlink"], bool) and isinstance(src["bpf"], bool)
    assert src["bpf_error"] is None or (isinstance(src["bpf_error"], str) and "\n" not in src["bpf_error"])
    assert snap["netns"] and snap["listeners"] and snap["close_wait"]
    for ns in snap["netns"]:
        check_types(ns, CONTRACT_NETNS, "netns")
    for lst in snap["listeners"]:
        check_types(lst, CONTRACT_LISTENER, "listener")
        assert lst["family"] in ("ipv4", "ipv6")
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in lst["children"].items())
    for cw in snap["close_wait"]:
        check_types(cw, CONTRACT_CLOSE_WAIT, "close_wait")


def test_unprivileged_user_gets_netlink_view_and_a_reason(labns, tmp_path):
    """Without root: own netns only, BPF off with a one-line reason, null BPF fields, exit 0."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is part of every Debian"
    labns.serve(addr="127.0.0.1", port=8088, backlog=3, mode="no-accept")
    labns.clients(addr="127.0.0.1", port=8088, count=2, connect_timeout=0.2)
    # nobody, inside the lab netns (entered as root by ip netns exec, then privileges dropped)
    cmd = labns.argv([setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
                      sys.executable, "-m", "tcptop_q", "--once", "--json", "--interval", "0.2"])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["sources"]["bpf"] is False and "root" in snap["sources"]["bpf_error"]
    lst = find(snap["listeners"], 8088)
    assert lst["accept_queue"] == 2 and lst["backlog"] == 3
    assert lst["overflows"] is None and lst["accepts"] is None
    assert lst["pid"] is None  # another user's fds are not readable: unknown, not guessed
    assert any("CAP_SYS_PTRACE" in note for note in snap["sources"]["notes"])


def test_rates_are_the_kernels_counter_deltas_over_the_interval(labns):
    """Between two consecutive reports, drop_rate x interval is the listener's sk_drops delta,
    and the netns rates are the TcpExt deltas (sk_drops == ListenDrops is checked at rest in
    the seed test: here SYNs keep arriving between the sock_diag and the /proc read)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    labns.serve(addr="127.0.0.1", port=8097, backlog=1, mode="no-accept")
    labns.clients(addr="127.0.0.1", port=8097, count=2, connect_timeout=0.2, gap=0.02)
    retrier = labns.spawn([sys.executable, "-m", "tcptop_q.lab.worker", "clients", "--addr", "127.0.0.1",
                           "--port", "8097", "--count", "4", "--connect-timeout", "6", "--gap", "0"])
    try:
        proc = subprocess.run([sys.executable, "-m", "tcptop_q", "--batch", "--json", "--no-bpf", "-d", "1",
                               "-n", "4", "--netns", str(labns.inode)], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
    finally:
        retrier.terminate()
        retrier.wait()
    snaps = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(snaps) == 4
    moved = 0
    for before, after in zip(snaps, snaps[1:], strict=False):
        lb, la = find(before["listeners"], 8097), find(after["listeners"], 8097)
        nb, na = before["netns"][0], after["netns"][0]
        dt = after["interval"]
        assert round(la["drop_rate"] * dt) == la["drops"] - lb["drops"]
        assert round(na["rates"]["ListenDrops"] * dt) == na["ListenDrops"] - nb["ListenDrops"]
        assert round(na["rates"]["ListenOverflows"] * dt) == na["ListenOverflows"] - nb["ListenOverflows"]
        moved += la["drops"] - lb["drops"]
    assert moved > 0  # SYN retries (1 s, 3 s) landed inside the window: the rates were not all 0


def test_established_children_match_ss(labns):
    """Children by state for ESTABLISHED (accepted and held open) and CLOSE_WAIT, against ss."""
    import sys

    server = labns.serve(addr="0.0.0.0", port=8098, backlog=16, mode="accept-hold")
    holders = labns.spawn([sys.executable, "-m", "tcptop_q.lab.worker", "clients", "--addr", "127.0.0.1",
                           "--port", "8098", "--count", "5", "--payload", "", "--hold", "20"])
    try:
        labns.clients(addr="127.0.0.1", port=8098, count=3, payload="")  # these close: CLOSE_WAIT
        import time

        deadline = time.monotonic() + 10
        while len(ss_state(labns, "established")) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        snap = once("--netns", str(labns.inode))
        lst = find(snap["listeners"], 8098)
        server_side = [r for r in ss_state(labns, "established") if r["local"].endswith(":8098")]
        assert lst["children"]["ESTABLISHED"] == len(server_side) == 5
        assert lst["children"]["CLOSE_WAIT"] == len(ss_state(labns, "close-wait")) == 3
        assert all(server.pid in r["pids"] for r in server_side)
    finally:
        holders.terminate()
        holders.wait()
