"""SYN-path drops told apart by cause: `overflows` equals the netns' ListenOverflows delta when
the kernel drops SYNs that are not overflows (syncookies off, SYN queue over 3/4 full: they raise
ListenDrops and sk_drops only) and under tcp_syncookies=2 (cookie-path third-ACK overflows, whose
segments are freed by paths that do not touch sk_drops). Per-netns sysctls, set inside the
test's own netns (tcptop_q/lab/experiments.py has the recipes)."""

from __future__ import annotations

import shutil
import time

from tests.conftest import need

PORT = 8130


def _sampling(labns):
    from tcptop_q.sampler import Sampler
    from tcptop_q.source import load_bpf

    probes, error = load_bpf(None, labns.inode)
    assert probes is not None, error
    probes.start()
    assert probes.wait_ready(90), probes.error
    return probes, Sampler(bpf=probes, netns=labns.inode, blocking_owners=True)


def _overflows_settle_at_the_kernels(labns, sampler, before: dict[str, int]):
    """Reports until ours equals the kernel's ListenOverflows delta and both stay (a deadline)."""
    deadline = time.monotonic() + 15
    while True:
        kernel = labns.netstat()["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
        snap = sampler.sample(0.2)
        (lst,) = [x for x in snap.listeners if x.lport == PORT]
        again = labns.netstat()["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
        if (lst.overflows == kernel == again) or time.monotonic() > deadline:
            return lst, kernel, again, snap
        time.sleep(0.1)


def test_syn_drops_past_three_quarters_of_the_syn_queue_are_not_overflows(labns, bpf):
    from tcptop_q.lab.experiments import listen, syn_queue_three_quarters

    labns.sysctl("net.ipv4.tcp_syncookies", "0")
    labns.sysctl("net.ipv4.tcp_max_syn_backlog", "16")
    probes, sampler = _sampling(labns)
    srv = listen(labns, PORT, 64, defer_accept=30)
    socks = []
    try:
        sampler.sample(0.2)
        before = labns.netstat()
        socks = syn_queue_three_quarters(labns, PORT)
        lst, kernel, again, _snap = _overflows_settle_at_the_kernels(labns, sampler, before)
        after = labns.netstat()
        # The recipe did what it says: SYNs dropped, the listener's sk_drops up, no overflow.
        assert after["TcpExtListenDrops"] - before["TcpExtListenDrops"] >= 14
        assert lst.drops >= 14 and lst.accept_queue == 0
        assert kernel == again == 0
        assert lst.overflows == 0
    finally:
        for c in socks:
            c.close()
        srv.close()
        sampler.close()
        probes.close()


def test_overflows_under_syncookies_2_cookie_third_ack_and_syn_path(labns, bpf):
    from tcptop_q.lab.experiments import cookie_third_ack_overflow, listen

    need(shutil.which("nft") is not None, "needs nft (nftables) to lose a client's third ACK")
    labns.sysctl("net.ipv4.tcp_syncookies", "2")
    probes, sampler = _sampling(labns)
    srv = listen(labns, PORT, 1)
    socks = []
    try:
        sampler.sample(0.2)
        before = labns.netstat()
        socks = cookie_third_ack_overflow(labns, PORT)
        lst, kernel, again, snap = _overflows_settle_at_the_kernels(labns, sampler, before)
        after = labns.netstat()
        assert after["TcpExtSyncookiesSent"] - before["TcpExtSyncookiesSent"] >= 3  # cookies, no request socks
        assert kernel == again >= 2  # C's cookie third ACK, and D's SYNs
        # No event names the cookie-path overflow: what the probes saw on the listener is other drops.
        assert "TCP_LISTEN_OVERFLOW" not in (lst.drop_reasons or {})
        assert lst.overflows == kernel, (lst.overflows, kernel, lst.drops, lst.drop_reasons, snap.sources.notes)
    finally:
        for c in socks:
            c.close()
        srv.close()
        sampler.close()
        probes.close()
