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


# 0.0.0.0:P and [::]:P (IPV6_V6ONLY), both accepting; each client sends data the server never
# reads, and the server closes the first ABORT[family] children it accepted: a RST each
# (unread data, TCPAbortOnClose). The rest stay open. Prints "done" when all are closed.
DUAL_PORT = 8096
N = {"ipv4": 5, "ipv6": 7}
ABORT = {"ipv4": 3, "ipv6": 4}
DUAL_SERVER = f"""
import socket, sys, time
N, ABORT, P = {N!r}, {ABORT!r}, {DUAL_PORT}
v4 = socket.socket(socket.AF_INET)
v4.bind(("0.0.0.0", P))
v6 = socket.socket(socket.AF_INET6)
v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
v6.bind(("::", P))
v4.listen(16)
v6.listen(16)
kept = []
for fam, lst, addr, af in (("ipv4", v4, "127.0.0.1", socket.AF_INET), ("ipv6", v6, "::1", socket.AF_INET6)):
    for i in range(N[fam]):
        c = socket.socket(af)
        c.connect((addr, P))
        c.sendall(b"unread")
        kept.append(c)
        child, _ = lst.accept()
        deadline = time.monotonic() + 5
        while len(child.recv(16, socket.MSG_PEEK)) < 6 and time.monotonic() < deadline:
            pass  # the data has arrived: closing now resets
        if i < ABORT[fam]:
            child.close()
        else:
            kept.append(child)
print("done", flush=True)
sys.stdin.read()
"""


def nstat_all(ns) -> dict[str, int]:
    import json

    data = json.loads(ns.run(["nstat", "-a", "-s", "-z", "-j"]).stdout)
    return {k: int(v) for k, v in data.get("kernel", data).items()}


def nstat(ns, name: str) -> int:
    return nstat_all(ns)[name]


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The netns' counters that changed: says what else the kernel did when a count is off."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_dual_stack_resets_land_on_their_own_listener(labns, bpf):
    """0.0.0.0:P + [::]:P both accepting, the server aborting some children with unread data:
    resets_sent per listener sum to the netns' TcpOutRsts delta, and each family's resets are
    its own listener's (a (netns, port) lookup would give them all to one of the two)."""
    from tcptop_q.sampler import Sampler
    from tcptop_q.source import load_bpf

    probes, error = load_bpf(None, labns.inode)
    assert probes is not None, error
    probes.start()
    assert probes.wait_ready(90), probes.error
    sampler = Sampler(bpf=probes, netns=labns.inode, blocking_owners=True)
    server = None
    try:
        sampler.sample(0.1)
        counters_before = nstat_all(labns)
        rsts_before = counters_before["TcpOutRsts"]
        server = labns.spawn([sys.executable, "-c", DUAL_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "done"
        deadline = time.monotonic() + 10
        while True:
            sent = nstat(labns, "TcpOutRsts") - rsts_before
            snap = sampler.sample(0.1)
            pair = {lst.family: lst for lst in snap.listeners if lst.lport == DUAL_PORT}
            got = {fam: lst.resets_sent for fam, lst in pair.items()}
            if got == ABORT or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # the kernel's count: the server's aborts, nothing else (on failure: what else moved, and
        # what the probes charged; a 6.1 TCG guest counted 8, cause not yet known)
        assert sent == sum(ABORT.values()), (got, moved(counters_before, nstat_all(labns)))
        assert got == ABORT
        assert sum(got.values()) == sent
        assert {fam: lst.resets_received for fam, lst in pair.items()} == {"ipv4": 0, "ipv6": 0}
    finally:
        sampler.close()
        probes.close()
        if server is not None:
            if server.stdin:
                server.stdin.close()
            server.wait(timeout=10)
