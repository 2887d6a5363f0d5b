"""The seed experiments, written once, on in-process sockets of a LabNetns.

Tests of the probes (tests/test_bpf_probes.py) and of other kernels (tests/compat/) run the
same recipes and check the numbers against the netns' own counters.
"""

from __future__ import annotations

import socket
import struct
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


def third_ack_overflow(ns: LabNetns, port: int, family: int = socket.AF_INET,
                       dst: str = "127.0.0.1") -> list[socket.socket]:
    """One third-ACK overflow on a listener made with listen(ns, port, 1, defer_accept=10):
    TCP_DEFER_ACCEPT keeps C a request sock while A and B fill the queue (limit 1 holds 2);
    C's first data segment then completes the handshake into the full queue (one overflow),
    and C resets at once, before its retransmit timer (>= 200 ms) could overflow again.
    Returns the client sockets still open (A, B); the caller closes them."""
    c = ns.socket(family)
    c.connect((dst, port))
    socks = []
    for _ in range(2):
        s = ns.socket(family)
        s.connect((dst, port))
        s.sendall(b"x")
        socks.append(s)
    wait_until("A and B in the accept queue", lambda: accept_queue(ns, port) == 2)
    before = ns.netstat()["TcpExtListenOverflows"]
    c.sendall(b"x")
    wait_until("the third-ACK overflow", lambda: ns.netstat()["TcpExtListenOverflows"] > before)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    return socks
