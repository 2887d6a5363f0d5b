"""The eBPF probes against the real kernel, in a private network namespace.

Every number is checked against the kernel's own accounting inside that netns
(ss, /proc/net/netstat). Needs root and bcc: fails when CI=true, skips otherwise.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcptop_q.lab.experiments import listen, seed_clients, third_ack_overflow
from tcptop_q.lab.netns import LabNetns as Netns
from tcptop_q.probes.bpf import BpfProbes

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(ok: bool, reason: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def _bcc_ok() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def loaded_programs() -> dict[int, str]:
    """id -> name of every BPF program in the kernel (other tcpq-top instances may run too)."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
    return {int(i): name for i, name in re.findall(r"^(\d+): \S+\s+name (\S+)", out, re.M)}


def own_bpf_fds() -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return [link for link in links if link.startswith("anon_inode:bpf") or link.startswith("anon_inode:[perf_event]")]


def assert_detached(ids: list[int]) -> None:
    # A raw tracepoint link's program is freed after an RCU grace period (~30 ms here): wait
    # for that, with a deadline, rather than read the list in the same instant.
    deadline = time.monotonic() + 5
    while [i for i in ids if i in loaded_programs()] and time.monotonic() < deadline:
        time.sleep(0.02)
    progs = loaded_programs()
    assert [i for i in ids if i in progs] == [], "programs left loaded after close()"
    assert own_bpf_fds() == [], "BPF/perf fds left open after close()"


@pytest.fixture
def netns() -> Iterator[Netns]:
    _need(os.geteuid() == 0, "needs root (network namespaces, BPF)")
    ns = Netns("bpf")
    try:
        yield ns
    finally:
        ns.close()
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.fixture
def probes(netns: Netns) -> Iterator[BpfProbes]:
    _need(_bcc_ok(), "needs bcc (python3-bpfcc) in this interpreter")
    p = BpfProbes(netns=netns.inode)
    p.start()
    ok = p.wait_ready(60)
    ids = p.prog_ids()
    try:
        _need(ok, f"BPF probes did not go live: {p.error}")
        yield p
    finally:
        p.close()
        assert_detached(ids)


def ss_cookie(ns: Netns, port: int) -> int:
    """The listener's socket cookie as ss prints it (sk:<hex>); dumping generates it."""
    out = ns.exec("ss", "-ltnHe", f"sport = :{port}")
    m = re.search(r"\bsk:([0-9a-f]+)", out)
    assert m, out
    return int(m.group(1), 16)


def settle(probes: BpfProbes, seconds: float = 0.3):
    time.sleep(seconds)
    return probes.read()


def timeline_until_closed(probes: BpfProbes, *tuple_, timeout: float = 5.0):
    """The socket's timeline once it reached CLOSE (a loaded machine can be slow to get there)."""
    deadline = time.monotonic() + timeout
    while True:
        probes.read()
        tl = probes.timeline(*tuple_)
        if (tl and tl[-1].new == "CLOSE") or time.monotonic() > deadline:
            return tl
        time.sleep(0.1)


def state_changes(tl):
    """The state changes of a timeline, without its "accepted by pid N" entry (asserted on
    its own: tests/kernel/test_accept.py); accept() in _one_connection adds exactly one."""
    accepts = [t for t in tl if t.kind == "accept"]
    assert len(accepts) <= 1 and all(t.pid == os.getpid() for t in accepts), accepts
    return [t for t in tl if t.kind == "state"]


def server_sequences(events, netns: int, port: int) -> dict[int, list[tuple[str, str]]]:
    """Transitions of the server's children (not the listener itself), by socket."""
    seqs: dict[int, list[tuple[str, str]]] = {}
    for ev in events:
        if ev.netns == netns and ev.lport == port and ev.kind == "state":
            seqs.setdefault(ev.skaddr, []).append((ev.old, ev.new))
    return {sk: seq for sk, seq in seqs.items() if seq[0] != ("CLOSE", "LISTEN")}


def the_listener(reading, netns: int, port: int):
    found = [(k, v) for k, v in reading.listeners.items() if k.netns == netns and k.lport == port]
    assert len(found) == 1, reading.listeners
    return found[0]


# ---------------------------------------------------------------------- seed experiment 1


def test_seed_experiment_backlog5_never_accept(netns: Netns, probes: BpfProbes) -> None:
    port = 8080
    srv = listen(netns, port, 5)
    cookie = ss_cookie(netns, port)
    before = netns.netstat()
    established = seed_clients(netns, port)
    reading = settle(probes)
    after = netns.netstat()
    try:
        assert established == 6
        key, counts = the_listener(reading, netns.inode, port)
        # The key joins with what ss (sock_diag) shows in that netns.
        assert key.netns == int(subprocess.run(["stat", "-L", "-c", "%i", netns.path], capture_output=True,
                                               text=True).stdout)
        ss = netns.exec("ss", "-ltnH")
        assert f"{key.laddr}:{key.lport}" in ss.split()
        assert (key.family, key.laddr, key.cookie) == ("ipv4", "127.0.0.1", cookie)
        assert counts.queued == 6
        assert counts.peak_accept_queue == 6
        # SYN-path overflows are freed with consume_skb: invisible to tracepoints.
        assert counts.listen_overflow_drops == 0
        assert after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"] > 0

        seqs = server_sequences(reading.events, netns.inode, port)
        full = [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT")]
        assert sorted(seqs.values()) == [full] * 6, seqs

        # One child's timeline: in time order, with the tuple from SYN_RECV->ESTABLISHED.
        ev = next(e for e in reading.events if e.lport == port and e.new == "CLOSE_WAIT")
        tl = probes.timeline(netns.inode, "ipv4", "127.0.0.1", port, ev.raddr, ev.rport)
        assert [(t.old, t.new) for t in tl] == full
        assert [t.time for t in tl] == sorted(t.time for t in tl)
        assert abs(tl[-1].time - time.time()) < 30
        assert tl[1].ms_in_old is not None and tl[2].ms_in_old is not None
        assert all(t.skaddr == ev.skaddr for t in tl)
        assert probes.timeline_by_skaddr(netns.inode, ev.skaddr) == tl
        state, since = probes.state_since(netns.inode, "ipv4", "127.0.0.1", port, ev.raddr, ev.rport)
        assert state == "CLOSE_WAIT" and since == tl[-1].time
        # Peak is per read interval: nothing queued since the last read.
        again = probes.read()
        assert the_listener(again, netns.inode, port)[1].peak_accept_queue == 0
        assert the_listener(again, netns.inode, port)[1].queued == 6
        assert reading.lost_events == 0
    finally:
        srv.close()


# ---------------------------------------------------------------------- third-ACK overflow


def test_third_ack_overflow_matches_listenoverflows(netns: Netns, probes: BpfProbes) -> None:
    """TCP_DEFER_ACCEPT keeps C a request sock while A and B fill the queue (limit 1 holds 2);
    C's first data segment then completes the handshake into a full queue: one third-ACK
    overflow, dropped with reason TCP_LISTEN_OVERFLOW and rx_sk = the listener. C resets
    at once, before its retransmit timer (>= 200 ms) could overflow again."""
    port = 8081
    srv = listen(netns, port, 1, defer_accept=10)
    before = netns.netstat()
    socks = []
    try:
        socks = third_ack_overflow(netns, port)
        reading = settle(probes)
        after = netns.netstat()
        overflows = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
        key, counts = the_listener(reading, netns.inode, port)
        assert overflows == 1, "recipe should overflow exactly once"
        assert counts.listen_overflow_drops == overflows
        if "drop_reasons" in probes.hooks:  # kfree_skb with rx_sk (6.11+); a kprobe counts it elsewhere
            assert counts.drop_reasons.get("TCP_LISTEN_OVERFLOW") == overflows
        assert counts.queued == 2 and counts.peak_accept_queue == 2
    finally:
        for s in socks:
            s.close()
        srv.close()


# ---------------------------------------------------------------------- experiments 2 and 3


def _one_connection(netns: Netns, port: int, server_first: bool):
    srv = listen(netns, port, 16)
    cli = netns.socket()
    cli.connect(("127.0.0.1", port))
    conn, _peer = srv.accept()
    cport = cli.getsockname()[1]
    cli.sendall(b"helloworld")
    assert conn.recv(100) == b"helloworld"
    if server_first:
        conn.close()
        assert cli.recv(100) == b""
        time.sleep(0.05)
        cli.close()
    else:
        cli.close()
        assert conn.recv(100) == b""
        time.sleep(0.05)
        conn.close()
    time.sleep(0.1)
    srv.close()
    return cport


def test_client_closes_first(netns: Netns, probes: BpfProbes) -> None:
    port = 8082
    cport = _one_connection(netns, port, server_first=False)
    tl = state_changes(timeline_until_closed(probes, netns.inode, "ipv4", "127.0.0.1", port, "127.0.0.1", cport))
    assert [(t.old, t.new) for t in tl] == [
        ("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT"),
        ("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE"),
    ]
    assert [t.time for t in tl] == sorted(t.time for t in tl)
    assert tl[3].pid == os.getpid()  # our close() moved it to LAST_ACK
    client = probes.timeline(netns.inode, "ipv4", "127.0.0.1", cport, "127.0.0.1", port)
    assert [(t.old, t.new) for t in client][:3] == [
        ("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
    ]


def test_server_closes_first(netns: Netns, probes: BpfProbes) -> None:
    port = 8083
    cport = _one_connection(netns, port, server_first=True)
    tl = state_changes(timeline_until_closed(probes, netns.inode, "ipv4", "127.0.0.1", port, "127.0.0.1", cport))
    assert [(t.old, t.new) for t in tl] == [
        ("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
        ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE"),
    ]
    assert probes.state_since(netns.inode, "ipv4", "127.0.0.1", port, "127.0.0.1", cport)[0] == "CLOSE"


def test_close_detaches_and_is_idempotent(netns: Netns) -> None:
    _need(_bcc_ok(), "needs bcc")
    p = BpfProbes(netns=netns.inode)
    p.start()
    assert p.wait_ready(60), p.error
    ids = p.prog_ids()
    try:
        names = {loaded_programs().get(i) for i in ids}
        # Exactly the planned programs: tracepoints, plus kprobe fallbacks on kernels that need them.
        assert names == {fn[:15] for _kind, _target, fn in p._plan.attach}  # kernel names: 15 chars
        # raw tracepoint programs where this kernel has them, else the classic ones
        assert {"tq_r_set_state", "tq_r_synack"} <= names or {"tq_set_state", "tq_synack"} <= names
    finally:
        p.close()
    p.close()
    assert_detached(ids)
    assert p.state == "off"
    assert p.read().listeners == {}


def test_feed_off_keeps_counts_exact(netns: Netns, probes: BpfProbes) -> None:
    port = 8084
    probes.set_feed("off")
    srv = listen(netns, port, 64)
    clients = []
    try:
        for _ in range(20):
            c = netns.socket()
            c.connect(("127.0.0.1", port))
            clients.append(c)
        reading = settle(probes)
        assert [e for e in reading.events if e.lport == port or e.rport == port] == []
        assert the_listener(reading, netns.inode, port)[1].queued == 20
        probes.set_feed("port", port)
        c = netns.socket()
        c.connect(("127.0.0.1", port))
        clients.append(c)
        reading = settle(probes)
        assert {(e.old, e.new) for e in reading.events if e.lport == port} == {
            ("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")}
        assert the_listener(reading, netns.inode, port)[1].queued == 21
    finally:
        for c in clients:
            c.close()
        srv.close()


def test_listener_close_forgets_it(netns: Netns, probes: BpfProbes) -> None:
    port = 8085
    srv = listen(netns, port, 4)
    c = netns.socket()
    c.connect(("127.0.0.1", port))
    assert the_listener(settle(probes), netns.inode, port)[1].queued == 1
    c.close()
    srv.close()
    reading = settle(probes)
    assert [k for k in reading.listeners if k.netns == netns.inode and k.lport == port] == []
    assert Path("/sys/kernel/btf/vmlinux").exists()


SIGTERM_CHILD = """
import os, signal, sys, time
from tcptop_q.lab.experiments import listen, seed_clients, third_ack_overflow
from tcptop_q.lab.netns import LabNetns as Netns
from tcptop_q.probes.bpf import BpfProbes
p = BpfProbes()
def on_term(signum, frame):
    p.close()
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
p.start()
ok = p.wait_ready(60)
print(ok, *p.prog_ids(), flush=True)
while True:
    p.read()
    time.sleep(0.01)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP-unhandled", "SIGKILL"])
def test_every_exit_path_detaches(sig: str) -> None:
    """close() from a SIGTERM handler mid-read; SIGHUP with default action (atexit does not run,
    the kernel drops programs with the last fd); SIGKILL likewise."""
    import signal
    import sys

    _need(os.geteuid() == 0 and _bcc_ok(), "needs root and bcc")
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        first = child.stdout.readline().split()
        assert first and first[0] == "True", child.stderr.read() if child.poll() is not None else first
        ids = [int(i) for i in first[1:]]
        assert ids and all(i in loaded_programs() for i in ids)
        signum = {"SIGTERM": signal.SIGTERM, "SIGHUP-unhandled": signal.SIGHUP, "SIGKILL": signal.SIGKILL}[sig]
        child.send_signal(signum)
        child.wait(timeout=20)
        if sig == "SIGTERM":
            assert child.returncode == 0
            assert child.stderr.read() == ""
        deadline = time.monotonic() + 5
        while any(i in loaded_programs() for i in ids) and time.monotonic() < deadline:
            time.sleep(0.1)  # program teardown after the last fd closes is asynchronous (RCU)
        assert [i for i in ids if i in loaded_programs()] == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_ipv6_listener_key(netns: Netns, probes: BpfProbes) -> None:
    port = 8086
    srv = netns.socket(socket.AF_INET6)
    srv.bind(("::1", port))
    srv.listen(3)
    c = netns.socket(socket.AF_INET6)
    try:
        c.connect(("::1", port))
        reading = settle(probes)
        key, counts = the_listener(reading, netns.inode, port)
        assert (key.family, key.laddr, counts.queued, counts.peak_accept_queue) == ("ipv6", "::1", 1, 1)
        child = [e for e in reading.events if e.lport == port and e.new == "ESTABLISHED"]
        assert len(child) == 1 and child[0].family == "ipv6" and child[0].raddr == "::1"
        assert f"[::1]:{port}" in netns.exec("ss", "-ltnH").split()
    finally:
        c.close()
        srv.close()


def test_child_states_and_resets_charged_to_listener(netns: Netns, probes: BpfProbes) -> None:
    port = 8087
    srv = listen(netns, port, 8)
    clients = []
    try:
        for _ in range(3):
            c = netns.socket()
            c.connect(("127.0.0.1", port))
            c.sendall(b"unread")
            clients.append(c)
        settle(probes)
        # Counted per port until queued, then on the listener they were queued on (the link).
        lid = (netns.inode, os.fstat(srv.fileno()).st_ino)
        assert probes.child_deltas().get((netns.inode, port), {}) == {}
        assert probes.listener_child_deltas()[lid] == {"ESTABLISHED": 3}
        clients[0].close()  # -> one child in CLOSE_WAIT
        conn, _ = srv.accept()
        time.sleep(0.05)
        conn.close()  # unread data: the kernel answers with a RST (resets_sent)
        clients[2].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        clients[2].close()  # RST to a queued child (resets_received)
        reading = settle(probes)
        deltas = probes.listener_child_deltas()[lid]
        assert deltas.get("ESTABLISHED", 0) + deltas.get("CLOSE_WAIT", 0) == 1, deltas
        counts = the_listener(reading, netns.inode, port)[1]
        assert (counts.resets_sent, counts.resets_received) == (1, 1)
        ss_states = netns.exec("ss", "-tanH", f"sport = :{port}").split("\n")
        assert sum(1 for line in ss_states if line.startswith(("ESTAB", "CLOSE-WAIT"))) == 1
    finally:
        for c in clients:
            c.close()
        srv.close()


def test_closed_listeners_leave_no_map_entries(netns: Netns, probes: BpfProbes) -> None:
    """Maps are bounded: a closed listener's counters, reasons and child counts are dropped."""
    port = 8088
    srv = listen(netns, port, 1, defer_accept=10)
    c = netns.socket()
    c.connect(("127.0.0.1", port))  # bare third ACK dropped by TCP_DEFER_ACCEPT: a drop reason
    c.sendall(b"x")
    settle(probes)
    b = probes._bpf
    reasons_of = lambda: [k for k, _v in b[b"tq_reasons"].items()]  # noqa: E731
    assert reasons_of(), "expected a drop charged to the listener"
    c.close()
    srv.close()
    settle(probes, 0.5)
    probes.read()  # entries are swept on the read after the listener is gone
    assert [k for k in probes.read().listeners if k.netns == netns.inode] == []
    assert reasons_of() == []
    assert (netns.inode, port) not in probes.child_deltas()
    assert [k for k in probes.listener_child_deltas() if k[0] == netns.inode] == []


def test_perf_buffer_feed(netns: Netns) -> None:
    """Kernels without a BPF ring buffer (< 5.8) get the feed through a perf buffer."""
    _need(_bcc_ok(), "needs bcc")
    p = BpfProbes(netns=netns.inode, ringbuf=False)
    p.start()
    assert p.wait_ready(60), p.error
    ids = p.prog_ids()
    try:
        assert "-DTQ_RINGBUF=0" in p._plan.cflags
        port = 8089
        cport = _one_connection(netns, port, server_first=False)
        settle(p)
        tl = p.timeline(netns.inode, "ipv4", "127.0.0.1", port, "127.0.0.1", cport)
        assert [t.new for t in tl] == ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
        assert p.read().lost_events == 0
    finally:
        p.close()
    assert_detached(ids)


def test_port_filter_compiled_in(netns: Netns) -> None:
    """--port is compiled into the programs: other ports cost one comparison and leave no trace."""
    _need(_bcc_ok(), "needs bcc")
    p = BpfProbes(port=8090, netns=netns.inode)
    p.start()
    assert p.wait_ready(60), p.error
    ids = p.prog_ids()
    socks = []
    try:
        assert "#define TQ_FILTER_PORT 8090" in p.program_text()
        for port in (8090, 8091):
            srv = listen(netns, port, 4)
            c = netns.socket()
            c.connect(("127.0.0.1", port))
            socks += [srv, c]
        reading = settle(p)
        assert {k.lport for k in reading.listeners} == {8090}
        assert reading.events
        assert all(8090 in (e.lport, e.rport) for e in reading.events)
    finally:
        for s in socks:
            s.close()
        p.close()
    assert_detached(ids)
