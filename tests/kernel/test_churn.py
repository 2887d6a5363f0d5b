"""Churn: listeners and namespaces come and go while tcpq-top watches; it never crashes and
never keeps a dead namespace alive."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import ROOT

CHURN = r"""
import socket, sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
opened = 0
while time.monotonic() < end:
    tick = time.monotonic()
    socks = []
    for _ in range(rate // 10):
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8); socks.append(s)
    opened += len(socks)
    for s in socks: s.close()
    time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
print(opened, flush=True)
"""


def test_listener_churn_1000_per_second_for_30s(labns):
    churn = labns.spawn([sys.executable, "-c", CHURN, "1000", "30"], stdout=subprocess.PIPE, text=True)
    run = subprocess.run(
        [sys.executable, "-m", "tcptop_q", "--batch", "-d", "0.2", "-n", "150", "--no-bpf", "--netns", str(labns.inode)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    opened = int(churn.communicate(timeout=60)[0])
    assert opened >= 10000  # the load really ran (it aims at 1000/s for 30 s; a busy box gets less)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert sum(line.startswith("tcpq-top ") for line in run.stdout.splitlines()) == 150


def test_deleted_netns_is_dropped_and_not_pinned(root):
    from tcptop_q.lab.netns import LabNetns
    from tcptop_q.sampler import Sampler

    sampler = Sampler(blocking_owners=True)
    ns = LabNetns("gone")
    try:
        ns.serve(addr="127.0.0.1", port=8091, backlog=4)
        sampler.reader.discover_every = 0  # rediscover each tick, as a slow tick would
        snap = sampler.sample(0.1)
        assert any(lst.netns == ns.inode and lst.lport == 8091 for lst in snap.listeners)
        assert ns.inode in sampler.reader.handles
    finally:
        ns.close()  # ends the server, deletes the netns mount
    snap = sampler.sample(0.1)
    try:
        assert not any(lst.netns == ns.inode for lst in snap.listeners)
        assert ns.inode not in {n.inode for n in snap.netns}
        # Our diag socket and /proc fds would pin the namespace: they must be closed.
        assert ns.inode not in sampler.reader.handles
    finally:
        sampler.close()


def test_owner_exit_while_shown(labns):
    from tcptop_q.sampler import Sampler

    server = labns.serve(addr="127.0.0.1", port=8092, backlog=4)
    sampler = Sampler(netns=labns.inode, blocking_owners=True)
    try:
        first = sampler.sample(0.1)
        assert [lst.pid for lst in first.listeners if lst.lport == 8092] == [server.pid]
        server.terminate()
        server.wait(timeout=10)
        deadline = time.monotonic() + 10  # the kernel closes the listener as the process goes
        while "8092" in labns.run(["ss", "-ltnH", "sport = :8092"]).stdout and time.monotonic() < deadline:
            time.sleep(0.05)
        after = sampler.sample(0.1)
        assert not [lst for lst in after.listeners if lst.lport == 8092]  # the kernel closed it
        assert server.pid not in {owner[0] for owner in sampler.owners.by_inode.values()}
    finally:
        sampler.close()
