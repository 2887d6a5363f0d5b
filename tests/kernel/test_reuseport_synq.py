"""The SYN queue of each SO_REUSEPORT member (issue 17): requests steered to known members by a
classic BPF reuseport program the test attaches (member = client source port mod 4), held in the
SYN queue by TCP_DEFER_ACCEPT (the clients' bare third ACKs are dropped, the requests stay).
Each member's syn_queue and SYN_RECV children equal what the test sent it, and they add up to
the kernel's `ss state syn-recv`; where the tcp iterator is refused, the by-address count
stays, with the note."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

PORT = 8131
SENT = (12, 10, 9, 9)  # requests steered to member 0, 1, 2, 3
SPORT_BASE = 41000  # client source ports: SPORT_BASE + 4*k + member

# Four listeners in one group; member i is the i-th to listen (the kernel's reuseport array
# order). The cBPF program: A = TCP source port (absolute load at SKF_NET_OFF + 20: IPv4 header
# without options, as on loopback); return A % 4, the index of the member.
SERVER = f"""
import json, signal, socket, struct, sys
signal.alarm(120)
SKF_NET_OFF = -0x100000
prog = [(0x28, 0, 0, (SKF_NET_OFF + 20) & 0xFFFFFFFF),  # ld h [net + 20]
        (0x94, 0, 0, 4),                                   # mod #4
        (0x16, 0, 0, 0)]                                   # ret a
insns = b"".join(struct.pack("HBBI", *i) for i in prog)
import ctypes
buf = ctypes.create_string_buffer(insns)
fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
socks, cookies = [], []
for i in range(4):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 60)
    s.bind(("127.0.0.1", {PORT}))
    s.listen(64)
    if i == 0:
        s.setsockopt(socket.SOL_SOCKET, 51, fprog)  # SO_ATTACH_REUSEPORT_CBPF
    socks.append(s)
    cookies.append(struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, 57, 8))[0])  # SO_COOKIE
print(json.dumps(cookies), flush=True)
sys.stdin.read()
"""

# Each client binds its source port (SPORT_BASE + 4*k + member) and connects; the handshake
# completes on the client's side, the server keeps a request socket (TCP_DEFER_ACCEPT).
CLIENTS = f"""
import json, socket, sys
socks = []
for member, count in enumerate(json.loads(sys.argv[1])):
    for k in range(count):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("127.0.0.1", {SPORT_BASE} + 4 * k + member))
        c.settimeout(5)
        c.connect(("127.0.0.1", {PORT}))
        socks.append(c)
print(len(socks), flush=True)
sys.stdin.read()
"""


def ss_requests(labns) -> dict[int, int]:
    """Request sockets on PORT by client source port, as the kernel's ss lists them."""
    out = labns.run(["ss", "-tnH", "state", "syn-recv", f"sport = :{PORT}"]).stdout
    ports = [int(line.split()[-1].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()]
    return {p: ports.count(p) for p in ports}


def start_group(labns):
    server = labns.spawn([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cookies = json.loads(server.stdout.readline())
    assert len(set(cookies)) == 4 and 0 not in cookies
    clients = labns.spawn([sys.executable, "-c", CLIENTS, json.dumps(SENT)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    assert int(clients.stdout.readline()) == sum(SENT)
    deadline = time.monotonic() + 20
    while len(ss_requests(labns)) < sum(SENT):
        assert time.monotonic() < deadline, ss_requests(labns)
        time.sleep(0.05)
    ports = ss_requests(labns)
    # The steering did what the test says: every request's source port picks its member.
    assert [sum(1 for p in ports if (p - SPORT_BASE) % 4 == m) for m in range(4)] == list(SENT)
    return server, clients, cookies


def stop(*procs) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            proc.terminate()
            proc.wait(timeout=10)


def loaded_iterators() -> int:
    """tcp iterator links in the kernel (bpftool link show: `iter ... target_name tcp`)."""
    out = subprocess.run(["bpftool", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if " iter " in line and "target_name tcp" in line)


def start_probes(labns):
    from tcptop_q.probes import synq
    from tcptop_q.source import load_bpf

    probes, error = load_bpf(None, labns.inode)
    assert probes is not None, error
    probes.start()
    assert probes.wait_ready(90), probes.error
    deadline = time.monotonic() + 60  # loaded before live: synq_error is settled by now
    while probes.synq_error == "loading" or probes.synq_error == "not loaded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert probes.hooks.get(synq.METRIC) == synq.HOOK, probes.synq_error
    return probes


def settled(sampler, labns):
    """A snapshot (with a full child dump: children by state) taken while ss showed the same
    request sockets before and after it."""
    deadline = time.monotonic() + 20
    while True:
        before = ss_requests(labns)
        snap = sampler.sample(0.2, children=True)
        if before == ss_requests(labns):
            return snap, before
        assert time.monotonic() < deadline, "the request sockets never settled"


@pytest.mark.parametrize("order", ["group_first", "probes_first"])
def test_each_member_gets_the_requests_steered_to_it(labns, bpf, order):
    from tcptop_q.model import snapshot_to_json
    from tcptop_q.probes.synq import BY_ADDRESS_NOTE
    from tcptop_q.sampler import Sampler

    server = clients = probes = sampler = None
    iters_before = loaded_iterators()
    try:
        if order == "group_first":
            server, clients, cookies = start_group(labns)
            probes = start_probes(labns)
        else:
            probes = start_probes(labns)
            server, clients, cookies = start_group(labns)
        sampler = Sampler(bpf=probes, netns=labns.inode, blocking_owners=True)
        snap, ports = settled(sampler, labns)
        assert not any(n.startswith(BY_ADDRESS_NOTE) for n in snap.sources.notes), snap.sources.notes
        out = snapshot_to_json(snap)
        got = {x["cookie"]: x for x in out["listeners"] if x["lport"] == PORT}
        assert set(got) == set(cookies)
        assert [got[c]["syn_queue"] for c in cookies] == list(SENT)
        assert [got[c]["children"].get("SYN_RECV", 0) for c in cookies] == list(SENT)
        assert sum(got[c]["syn_queue"] for c in cookies) == sum(ports.values())  # == ss state syn-recv
        # Each request's row (the listener screen's connections) is on the member it was steered to.
        assert snap.connections is not None
        rows = {x.key.cookie: sorted(c.rport for c in snap.connections.get(x.key, ()) if c.state == "SYN_RECV")
                for x in snap.listeners if x.lport == PORT}
        assert [rows[c] for c in cookies] == [sorted(p for p in ports if (p - SPORT_BASE) % 4 == m)
                                              for m in range(4)]

        # The kernel's own count agrees: each member's icsk_accept_queue.qlen is its requests.
        walk = sampler.reader.run_in(labns.inode, probes.synq_walk)
        assert walk is not None
        assert [walk.qlen[c] for c in cookies] == [walk.requests[c] for c in cookies] == list(SENT)
    finally:
        if sampler is not None:
            sampler.close()
        if probes is not None:
            probes.close()
        stop(clients, server)
    assert loaded_iterators() == iters_before  # the iterator's link went with the probes


def test_refused_iterator_keeps_the_address_count_with_a_note(labns, bpf, monkeypatch):
    """The iterator refused (a fault this host cannot cause: the load is made to fail): the probes
    stay live, the group's SYN queue is counted by address, on one member, and the note says so.
    Without probes at all, the same, with the reason."""
    from tcptop_q.probes import synq
    from tcptop_q.sampler import Sampler

    def refuse(*_a, **_k):
        raise synq.SynqError("tcp iterator attach refused: Operation not permitted (test)")

    monkeypatch.setattr(synq, "SynqIter", refuse)
    server = clients = probes = sampler = bare = None
    try:
        server, clients, cookies = start_group(labns)
        from tcptop_q.source import load_bpf

        probes, error = load_bpf(None, labns.inode)
        assert probes is not None, error
        probes.start()
        assert probes.wait_ready(90), probes.error
        deadline = time.monotonic() + 60
        while probes.synq_error in ("loading", "not loaded"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert synq.METRIC not in probes.hooks
        for smp in (Sampler(bpf=probes, netns=labns.inode), Sampler(netns=labns.inode)):
            sampler = smp
            snap, ports = settled(smp, labns)
            members = sorted((x.syn_queue for x in snap.listeners if x.lport == PORT), reverse=True)
            assert members == [sum(ports.values()), 0, 0, 0] == [sum(SENT), 0, 0, 0]
            notes = [n for n in snap.sources.notes if n.startswith(synq.BY_ADDRESS_NOTE)]
            want = "(test)" if smp.bpf is not None else "BPF probes off"
            assert len(notes) == 1 and want in notes[0], snap.sources.notes
            smp.close()
            sampler = None
    finally:
        if sampler is not None:
            sampler.close()
        if bare is not None:
            bare.close()
        if probes is not None:
            probes.close()
        stop(clients, server)
