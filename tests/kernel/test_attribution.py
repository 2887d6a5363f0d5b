"""Two listeners on one port, different addresses, one netns: each owns only its sockets.

127.0.0.1:8080 and 10.0.0.5:8080 each get CLOSE_WAIT children (the peers closed, the server
never accept()s). The sampler decides once which listener each socket belongs to; the
diagnosis and the listener screen read that decision. The kernel's own count is `ss` run
inside the test's netns.
"""

from __future__ import annotations

import subprocess
import sys
import time

SERVER = r"""
import socket, sys
N = {"127.0.0.1": 5, "10.0.0.5": 7}
listeners, clients = [], []
for addr, n in N.items():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 8080)); s.listen(32); listeners.append(s)
    for _ in range(n):
        c = socket.create_connection((addr, 8080)); clients.append(c)
for c in clients:
    c.close()  # FIN to a child nobody accepted: it sits in CLOSE_WAIT
print("ready", flush=True)
sys.stdin.read()
"""


def ss_close_wait(ns, addr: str) -> int:
    out = ns.run(["ss", "-Htn", "state", "close-wait", "src", f"{addr}:8080"]).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_same_port_two_addresses_each_listener_owns_only_its_close_wait(labns):
    from tcptop_q.diagnosis import diagnose
    from tcptop_q.sampler import Sampler

    labns.run(["ip", "addr", "add", "10.0.0.5/32", "dev", "lo"])
    server = labns.spawn([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    want = {"127.0.0.1": 5, "10.0.0.5": 7}
    deadline = time.monotonic() + 10
    while {a: ss_close_wait(labns, a) for a in want} != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {a: ss_close_wait(labns, a) for a in want} == want  # the kernel's count
    sampler = Sampler(netns=labns.inode, blocking_owners=True)
    try:
        sampler.sample(0.1)
        snap = sampler.sample(0.1, children=True)
        by_addr = {lst.laddr: lst for lst in snap.listeners if lst.lport == 8080}
        assert set(by_addr) == set(want)
        for addr, n in want.items():
            lst = by_addr[addr]
            mine = [cw for cw in snap.close_wait if cw.listener == lst.key]
            assert len(mine) == n and {cw.laddr for cw in mine} == {addr}
            assert lst.children["CLOSE_WAIT"] == n
            assert snap.connections is not None
            assert {c.laddr for c in snap.connections[lst.key]} == {addr}
            assert all(c.listener == lst.key for c in snap.connections[lst.key])
            texts = [f.text for f in diagnose(lst, sysctls={}, close_wait=snap.close_wait)]
            # never accepted (inode 0): the accept-queue story, counted per listener (issue 16)
            assert any(t.startswith(f"{n} children closed by the peer before") for t in texts), texts
    finally:
        sampler.close()
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=10)
