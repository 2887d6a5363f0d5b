"""The seed experiments, written once, on in-process sockets of a LabNetns.

Tests of the probes (tests/test_bpf_probes.py) and of other kernels (tests/compat/) run the
same recipes and check the numbers against the netns' own counters.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

from .netns import LabNetns


def listen(ns: LabNetns, port: int, backlog: int, *, defer_accept: int = 0,
           family: int = socket.AF_INET) -> socket.socket:
    """A listener on 127.0.0.1 (or [::] for AF_INET6) that nobody accepts on."""
    srv = ns.socket(family)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if defer_accept:
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
    srv.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", port))
    srv.listen(backlog)
    return srv


def seed_clients(ns: LabNetns, port: int, count: int = 10, timeout: float = 1.0) -> int:
    """Seed experiment 1's clients: each connects, sends 10 bytes and closes; returns how many
    connected. Against backlog 5 with no accept(): 6 (the queue holds backlog+1), the rest
    time out while their SYNs overflow."""
    established = 0
    for _ in range(count):
        c = ns.socket()
        c.settimeout(timeout)
        try:
            c.connect(("127.0.0.1", port))
            c.sendall(b"helloworld")
            established += 1
        except TimeoutError:
            pass
        finally:
            c.close()
    return established


def accept_queue(ns: LabNetns, port: int) -> int:
    """The listener's accept-queue depth as ss reports it (Recv-Q of the LISTEN row)."""
    for line in ns.exec("ss", "-ltnH", f"sport = :{port}").splitlines():
        return int(line.split()[1])
    return -1


def wait_until(what: str, cond, timeout: float = 5.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not seen within {timeout:g} s")
        time.sleep(step)


# C's retransmission timeout during the recipe: far above any wait below, so C's data is sent
# once and only once (the default 200 ms minimum is shorter than one poll under QEMU TCG, where a
# retransmit into the still-full queue overflows a second time). TCP_RTO_MAX is 120 s.
RECIPE_RTO_MIN_S = 60
_LO_ROUTE: dict[int, tuple[str, ...]] = {
    socket.AF_INET: ("local", "127.0.0.1", "dev", "lo", "table", "local", "proto", "kernel",
                     "scope", "host", "src", "127.0.0.1"),
    socket.AF_INET6: ("local", "::1", "dev", "lo", "table", "local", "proto", "kernel"),
}


def _loopback_rto_min(ns: LabNetns, family: int, rto_min_s: int | None) -> None:
    """Set (or clear, None) the rto_min metric of the netns' own loopback host route that a
    client of FAMILY connects through. IPv4 changes the route in place; IPv6 cannot (its
    kernel route has metric 0, which `ip route change` cannot name), so it is replaced."""
    metric = ("rto_min", f"{rto_min_s}s") if rto_min_s is not None else ()
    if family == socket.AF_INET6:
        ns.exec("ip", "-6", "route", "del", "local", "::1", "table", "local")
        ns.exec("ip", "-6", "route", "add", *_LO_ROUTE[family], *metric)
    else:
        ns.exec("ip", "route", "change", *_LO_ROUTE[family], *metric)


def syn_recv_requests(ns: LabNetns, port: int) -> int:
    """Request socks (SYN_RECV) of the listener on PORT, as ss lists them."""
    return len(ns.exec("ss", "-tnH", "state", "syn-recv", f"sport = :{port}").splitlines())


def tcp_retransmits(sock: socket.socket) -> tuple[int, int]:
    """(tcpi_rto in µs, tcpi_total_retrans) of SOCK from the kernel's TCP_INFO."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 8)[0], struct.unpack_from("I", info, 100)[0]


def third_ack_overflow(ns: LabNetns, port: int, family: int = socket.AF_INET,
                       dst: str = "127.0.0.1", timeout: float = 20.0) -> list[socket.socket]:
    """Exactly one third-ACK overflow on a listener made with listen(ns, port, 1, defer_accept=10):
    TCP_DEFER_ACCEPT keeps C a request sock (its bare ACK is dropped) while A and B fill the
    queue (limit 1 holds 2); C's first data segment then completes the handshake into the full
    queue: one overflow. Every step waits on the kernel's own state (ss, the netns' nstat, C's
    TCP_INFO) with a deadline, never on time: C's RTO is raised to RECIPE_RTO_MIN_S (route
    metric, this netns) so its data is not retransmitted while we wait (TCP_INFO must say 0
    retransmits), and C is reset once the overflow is counted; the recipe returns when the
    listener has no request sock left, so nothing more can overflow. Returns the client
    sockets still open (A, B); the caller closes them. FAMILY is the clients' (an AF_INET client
    of an [::] listener is dual-stack)."""
    _loopback_rto_min(ns, family, RECIPE_RTO_MIN_S)
    socks: list[socket.socket] = []
    try:
        c = ns.socket(family)
        try:
            c.connect((dst, port))
            wait_until("C deferred as a request sock", lambda: syn_recv_requests(ns, port) == 1, timeout)
            rto_us, _ = tcp_retransmits(c)
            if rto_us < RECIPE_RTO_MIN_S * 1_000_000:
                raise RuntimeError(f"C's RTO is {rto_us} µs: the route's rto_min did not apply")
            for _ in range(2):
                s = ns.socket(family)
                s.connect((dst, port))
                s.sendall(b"x")
                socks.append(s)
            wait_until("A and B in the accept queue", lambda: accept_queue(ns, port) == 2, timeout)
            before = ns.netstat()["TcpExtListenOverflows"]
            c.sendall(b"x")
            wait_until("the third-ACK overflow", lambda: ns.netstat()["TcpExtListenOverflows"] > before, timeout)
            _, retrans = tcp_retransmits(c)
            if retrans:
                raise RuntimeError(f"C's data was retransmitted {retrans} times before the overflow was seen")
        finally:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()  # RST: the listener drops C's request sock
        wait_until("C's request sock dropped after its reset", lambda: syn_recv_requests(ns, port) == 0, timeout)
    except BaseException:
        for s in socks:
            s.close()
        raise
    finally:
        _loopback_rto_min(ns, family, None)
    return socks


def syn_queue_three_quarters(ns: LabNetns, port: int, clients: int = 30) -> list[socket.socket]:
    """SYNs dropped that are not overflows, on a listener made with listen(ns, port, 64,
    defer_accept=30) after `ns.sysctl("net.ipv4.tcp_syncookies", "0")` and
    `ns.sysctl("net.ipv4.tcp_max_syn_backlog", "16")`: the clients' bare third ACKs are dropped
    (TCP_DEFER_ACCEPT: the final ACKs are lost to the listener), so their request socks stay in
    the SYN queue; past 3/4 of tcp_max_syn_backlog the kernel drops new SYNs from unproven
    peers (ListenDrops, sk_drops; not ListenOverflows, the accept queue is empty). Returns
    the clients (connects in progress); the caller closes them."""
    socks = []
    for _ in range(clients):
        c = ns.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        socks.append(c)
    before = ns.netstat()["TcpExtListenDrops"]
    wait_until("SYNs dropped past 3/4 of the SYN queue",
               lambda: ns.netstat()["TcpExtListenDrops"] - before >= clients - 16)
    return socks


def cookie_third_ack_overflow(ns: LabNetns, port: int) -> list[socket.socket]:
    """A cookie-path third-ACK overflow, then SYN-path overflows, on a listener made with
    listen(ns, port, 1) after `ns.sysctl("net.ipv4.tcp_syncookies", "2")` (a cookie for every
    SYN: no request sock). C's handshake completes on its side while an nftables rule in the
    netns drops its ACK; A and B then fill the queue (limit 1 holds 2); the rule goes and C's
    first data segment carries the cookie into the full queue (ListenOverflows, 1 sk_drops, no
    TCP_LISTEN_OVERFLOW event: the segment is freed by other paths). C resets at once. D then
    connects into the full queue: each of its SYNs overflows until it gives up (1.5 s).
    Returns A and B; the caller closes them. Needs nft (nftables)."""
    def nft(*args: str) -> None:
        subprocess.run(ns.argv(["nft", *args]), check=True, capture_output=True, timeout=10)

    c = ns.socket()
    c.bind(("127.0.0.1", 0))
    cport = c.getsockname()[1]
    nft("add", "table", "inet", "tq_lab")
    try:
        nft("add", "chain", "inet", "tq_lab", "out", "{ type filter hook output priority 0; }")
        nft("add", "rule", "inet", "tq_lab", "out", "tcp", "sport", str(cport), "tcp", "dport", str(port),
            "tcp", "flags", "&", "syn", "==", "0", "drop")
        c.connect(("127.0.0.1", port))
        socks = []
        for _ in range(2):
            s = ns.socket()
            s.connect(("127.0.0.1", port))
            s.sendall(b"x")
            socks.append(s)
        wait_until("A and B in the accept queue", lambda: accept_queue(ns, port) == 2)
    finally:
        nft("delete", "table", "inet", "tq_lab")
    before = ns.netstat()["TcpExtListenOverflows"]
    c.sendall(b"x")
    wait_until("the cookie third-ACK overflow", lambda: ns.netstat()["TcpExtListenOverflows"] > before)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    d = ns.socket()
    d.settimeout(1.5)
    try:
        d.connect(("127.0.0.1", port))
        socks.append(d)
    except OSError:
        d.close()
    return socks
