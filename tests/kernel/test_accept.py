"""accepted, accept wait and handshake per listener (probes/accept.bpf.c), on the real kernel,
in our own network namespaces, against what the test's own server and clients measured
(accept() return time minus the client's connect() completion) and against nstat.

Needs root and bcc: fails when CI=true, skips otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tcptop_q.accepts import AcceptTracker
from tcptop_q.model import Listener, ListenerKey, Snapshot, Sources
from tcptop_q.probes import hist
from tcptop_q.probes.bpf import BpfProbes
from tests.conftest import need

CLONE_NEWNET = 0x40000000
BUCKET_ERROR = 1 / 16  # probes/layout.py: a bucket is at most 1/16 of its value wide


def _kretprobe_possible() -> bool:
    from tcptop_q.probes import kprobes, tracefs

    try:
        return tracefs.kprobes_available() and "inet_csk_accept" in kprobes.kernel_functions(wanted=("inet_csk_accept",))
    except (OSError, tracefs.TracefsError):
        return False


# Both accept paths where the kernel has both (the 6.1 VM: tests/compat/run-vm.sh); the same
# scenarios and the same assertions against the same ground truth. A kernel without kprobes
# (this project's CI host) has one path: the other is not generated, rather than skipped.
ACCEPT_PATHS = ["syscall"] + (["kretprobe"] if _kretprobe_possible() else [])


@pytest.fixture(scope="module", params=ACCEPT_PATHS)
def probes(request) -> Iterator[BpfProbes]:
    need(os.geteuid() == 0, "needs root (network namespaces, BPF)")
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "needs bcc (python3-bpfcc) in this interpreter")
    p = BpfProbes(accept_hook=request.param)  # no netns filter: one test uses two namespaces
    p.start()
    ok = p.wait_ready(180)
    try:
        need(ok, f"BPF probes did not go live: {p.error}")
        need("accept_wait" in p.hooks, f"no accept hook on this kernel: {p.notes}")
        assert p.hooks["accepted"].startswith("kretprobe:" if request.param == "kretprobe" else "tracepoint:syscalls:")
        yield p
    finally:
        p.close()


def in_ns(ns, fn: Callable, *args):
    """fn(*args) on a thread inside netns `ns` (network namespaces are per thread)."""
    return ns.call(fn, *args)


def start_in_ns(ns, fn: Callable, *args) -> threading.Thread:
    t = threading.Thread(target=in_ns, args=(ns, fn, *args))
    t.start()
    return t


def listen(port: int, backlog: int = 16, defer_accept: int = 0) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if defer_accept:
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer_accept)
    srv.bind(("127.0.0.1", port))
    srv.listen(backlog)
    return srv


def connect_all(ns, port: int, n: int, send_after: Callable[[int], float] | None = None) -> tuple[dict, dict, list]:
    """n clients connect at once, from one thread with non-blocking connects (on loopback the
    handshake completes inside connect(), so the time taken right after it returns is the
    connect completion, without thread scheduling in between); with send_after, client i sends
    its first byte send_after(i) s after that. Returns ({local port: connect completion},
    {local port: first send}, the sockets, left open)."""

    def body() -> tuple[dict, dict, list]:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
        done: dict[int, float] = {}
        for c in socks:
            c.setblocking(False)
            err = c.connect_ex(("127.0.0.1", port))
            done[c.getsockname()[1]] = time.monotonic()
            assert err in (0, errno.EINPROGRESS), os.strerror(err)
        deadline = time.monotonic() + 10
        for c in socks:
            _r, w, _x = select.select([], [c], [], max(0.0, deadline - time.monotonic()))
            assert w and c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0, "connect failed"
            c.setblocking(True)
        sent: dict[int, float] = {}
        if send_after is not None:
            for i in sorted(range(n), key=send_after):
                c = socks[i]
                cport = c.getsockname()[1]
                time.sleep(max(0.0, done[cport] + send_after(i) - time.monotonic()))
                sent[cport] = time.monotonic()
                c.sendall(b"x")
        return done, sent, socks

    done, sent, socks = in_ns(ns, body)
    assert len(done) == n, f"{len(done)} of {n} clients connected"
    return done, sent, socks


def accept_n(srv: socket.socket, n: int, every: float) -> list[tuple[int, float]]:
    """accept() n children, one per `every` seconds: [(peer port, monotonic time it returned)]."""
    out = []
    conns = []
    for _ in range(n):
        if every:
            time.sleep(every)
        conn, peer = srv.accept()
        out.append((peer[1], time.monotonic()))
        conns.append(conn)
    for c in conns:
        c.close()
    return out


def listener_of(probes: BpfProbes, netns: int, port: int, pred: Callable, timeout: float = 10.0):
    """The listener's counts once pred(counts) holds (the probes count as the kernel goes)."""
    deadline = time.monotonic() + timeout
    while True:
        reading = probes.read()
        found = [v for k, v in reading.listeners.items() if k.netns == netns and k.lport == port]
        if found and pred(found[0]) or time.monotonic() > deadline:
            assert found, reading.listeners.keys()
            return found[0]
        time.sleep(0.05)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(-(-q * len(ordered) // 1)) - 1)]


def passive_opens(ns) -> int:
    data = json.loads(ns.run(["nstat", "-a", "-s", "-z", "-j"]).stdout)
    return int(data.get("kernel", data)["TcpPassiveOpens"])


# ---------------------------------------------------------------------- slow accept


def test_slow_server_accepted_and_wait(labns, probes: BpfProbes) -> None:
    """One accept every 200 ms while 10 clients connect at once."""
    port = 8090
    srv = in_ns(labns, listen, port)
    try:
        result: list = []
        server = threading.Thread(target=lambda: result.append(accept_n(srv, 10, 0.2)))
        server.start()
        done, _sent, socks = connect_all(labns, port, 10)
        server.join(30)
        accepted = result[0]
        waits = [t - done[peer] for peer, t in accepted]
        counts = listener_of(probes, labns.inode, port, lambda c: c.accepted >= 10)
        assert counts.accepted == len(accepted) == 10
        assert counts.queued == 10
        wait = hist.summary(counts.accept_wait)
        assert wait is not None and wait.count == 10
        assert abs(wait.max_s - max(waits)) <= 0.05 * max(waits) + 0.020, (wait, waits)
        median = nearest_rank(waits, 0.5)
        assert wait.p50_s is not None and abs(wait.p50_s - median) <= BUCKET_ERROR * median + 0.020, (wait, waits)
        assert abs(wait.sum_s - sum(waits)) <= 0.020 * len(waits)
        assert sum(n for _le, n in wait.buckets) == 10
        for s in socks:
            s.close()
    finally:
        srv.close()


def test_timeline_says_who_accepted(labns, probes: BpfProbes) -> None:
    """Timelines come from the feed, which other traffic on the host (a storm) can fill between
    reads: this test reads its own probes, compiled for its netns only."""
    port = 8091
    path = "kretprobe" if probes.hooks["accepted"].startswith("kretprobe:") else "syscall"
    mine = BpfProbes(netns=labns.inode, accept_hook=path)
    mine.start()
    need(mine.wait_ready(180), f"BPF probes did not go live: {mine.error}")
    probes = mine
    srv = in_ns(labns, listen, port)
    try:
        done, _sent, socks = connect_all(labns, port, 1)
        time.sleep(0.15)
        conn, peer = srv.accept()
        fd = conn.fileno()
        cport = next(iter(done))
        deadline = time.monotonic() + 10
        while True:
            probes.read()
            tl = probes.timeline(labns.inode, "ipv4", "127.0.0.1", port, "127.0.0.1", cport)
            acc = [t for t in tl if t.kind == "accept"]
            if acc or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(acc) == 1, tl
        # The kretprobe path sees the socket before its descriptor exists: no fd there.
        want_fd = None if probes.hooks["accepted"].startswith("kretprobe:") else fd
        assert (acc[0].pid, acc[0].fd) == (os.getpid(), want_fd)
        assert acc[0].ms_in_old is not None and 150 <= acc[0].ms_in_old < 150 + 1000
        fd_text = "" if want_fd is None else f" (fd {fd})"
        assert acc[0].describe().startswith(f"accepted by pid {os.getpid()}{fd_text} after ")
        # The timeline is in time order and the accept comes after the child was queued.
        assert [t.time for t in tl] == sorted(t.time for t in tl)
        assert [t.new for t in tl if t.kind == "state"][:2] == ["SYN_RECV", "ESTABLISHED"]
        conn.close()
        for s in socks:
            s.close()
    finally:
        srv.close()
        mine.close()


# ---------------------------------------------------------------------- normal server


def test_normal_server_accepted_equals_queued_and_passive_opens(labns, probes: BpfProbes) -> None:
    port = 8092
    srv = in_ns(labns, listen, port, 64)
    before = passive_opens(labns)
    try:
        result: list = []
        server = threading.Thread(target=lambda: result.append(accept_n(srv, 40, 0)))
        server.start()
        for _ in range(4):
            _done, _sent, socks = connect_all(labns, port, 10)
            for s in socks:
                s.close()
        server.join(30)
        opened = passive_opens(labns) - before
        counts = listener_of(probes, labns.inode, port, lambda c: c.accepted >= 40)
        assert len(result[0]) == 40 == opened
        assert counts.accepted == counts.queued == opened
        assert counts.accept_wait is not None and counts.accept_wait.count == 40
    finally:
        srv.close()


# ---------------------------------------------------------------------- two namespaces


def test_two_netns_waits_charged_to_the_right_listener(probes: BpfProbes, root) -> None:
    from tcptop_q.lab.netns import LabNetns

    port = 8093
    with LabNetns("acc-fast") as fast, LabNetns("acc-slow") as slow:
        srv_fast = in_ns(fast, listen, port)
        srv_slow = in_ns(slow, listen, port)
        try:
            res_fast: list = []
            res_slow: list = []
            t_fast = threading.Thread(target=lambda: res_fast.append(accept_n(srv_fast, 6, 0)))
            t_slow = threading.Thread(target=lambda: res_slow.append(accept_n(srv_slow, 6, 0.2)))
            t_fast.start()
            t_slow.start()
            got_fast: list = []
            c = threading.Thread(target=lambda: got_fast.append(connect_all(fast, port, 6)))
            c.start()
            done_slow, _s, socks_slow = connect_all(slow, port, 6)
            c.join(30)
            t_fast.join(30)
            t_slow.join(30)
            done_fast, _s, socks_fast = got_fast[0]
            wf = [t - done_fast[p] for p, t in res_fast[0]]
            ws = [t - done_slow[p] for p, t in res_slow[0]]
            cf = listener_of(probes, fast.inode, port, lambda c: c.accepted >= 6)
            cs = listener_of(probes, slow.inode, port, lambda c: c.accepted >= 6)
            assert cf.accepted == cs.accepted == 6
            sf, ss = hist.summary(cf.accept_wait), hist.summary(cs.accept_wait)
            assert sf is not None and ss is not None and sf.count == ss.count == 6
            assert abs(ss.max_s - max(ws)) <= 0.05 * max(ws) + 0.020, (ss, ws)
            assert abs(sf.max_s - max(wf)) <= 0.05 * max(wf) + 0.020, (sf, wf)
            assert ss.max_s > 1.0 > 0.2 > sf.max_s
            for s in socks_fast + socks_slow:
                s.close()
        finally:
            srv_fast.close()
            srv_slow.close()


# ---------------------------------------------------------------------- handshake


def test_handshake_with_defer_accept_is_the_clients_delay(labns, probes: BpfProbes) -> None:
    """With TCP_DEFER_ACCEPT the child is made (and queued) when the first data arrives: the
    handshake, first SYN-ACK sent -> child queued, is the client's delay between connect()
    returning and its first send, which the clients measure themselves."""
    port = 8094
    srv = in_ns(labns, listen, port, 16, 10)
    try:
        result: list = []
        server = threading.Thread(target=lambda: result.append(accept_n(srv, 5, 0)))
        server.start()
        done, sent, socks = connect_all(labns, port, 5, send_after=lambda i: 0.1 * (i + 1))
        server.join(30)
        delays = [sent[p] - done[p] for p in done]
        counts = listener_of(probes, labns.inode, port, lambda c: c.handshake is not None and c.handshake.count >= 5)
        hs = hist.summary(counts.handshake)
        assert hs is not None and hs.count == 5 == counts.queued
        assert abs(hs.max_s - max(delays)) <= 0.05 * max(delays) + 0.020, (hs, delays)
        median = nearest_rank(delays, 0.5)
        assert hs.p50_s is not None and abs(hs.p50_s - median) <= BUCKET_ERROR * median + 0.020, (hs, delays)
        for s in socks:
            s.close()
    finally:
        srv.close()


# ---------------------------------------------------------------------- never accepted


def test_seed_experiment_children_wait_and_are_never_accepted(labns, probes: BpfProbes) -> None:
    """Backlog 5, never accept, 10 clients: 6 children queued, none accepted, all six still
    in the queue, each with its time there."""
    port = 8095
    srv = in_ns(labns, listen, port, 5)
    try:
        established = 0
        socks = []

        def client() -> None:
            nonlocal established
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(0.5)
            try:
                c.connect(("127.0.0.1", port))
                c.sendall(b"helloworld")
                established += 1
            except (TimeoutError, OSError):
                pass
            socks.append(c)

        t0 = time.time()
        for _ in range(10):
            in_ns(labns, client)
        assert established == 6
        counts = listener_of(probes, labns.inode, port, lambda c: c.queued >= 6)
        assert (counts.queued, counts.accepted) == (6, 0)
        assert counts.accept_wait is not None and counts.accept_wait.count == 0
        waiting = {k: v for k, v in probes.in_queue().items() if k[0] == labns.inode}
        ss = labns.run(["ss", "-tnH", "state", "established", f"sport = :{port}"]).stdout.split("\n")
        peers = {int(line.split()[-1].rsplit(":", 1)[1]) for line in ss if line.strip()}
        assert {k[3] for k in waiting} == peers and len(peers) == 6
        assert all(t0 - 1 <= t <= time.time() for t in waiting.values())
        # Closing the clients: the children go CLOSE_WAIT, still queued, still waiting.
        for s in socks:
            s.close()
    finally:
        srv.close()


# ---------------------------------------------------------------------- the sampler's part


def test_tracker_rates_and_recent_window_from_real_counts(labns, probes: BpfProbes) -> None:
    """AcceptTracker over two real readings: accepted_rate is the delta over the interval,
    the recent window holds only what came after the first reading."""
    port = 8096
    srv = in_ns(labns, listen, port)
    try:
        tracker = AcceptTracker(recent_ticks=1)
        key = ListenerKey(labns.inode, "ipv4", "127.0.0.1", port, 0)
        row = Listener(key=key, inode=1, pid=None, comm=None, accept_queue=0, backlog=16, syn_queue=0,
                       drops=0, drop_rate=0.0)

        def snap(interval: float) -> Snapshot:
            return Snapshot(time=time.time(), interval=interval, kernel="", hostname="",
                            sources=Sources(True, True), netns=(), listeners=[row], close_wait=[])

        _d, _s, socks = connect_all(labns, port, 3)
        accept_n(srv, 3, 0)
        listener_of(probes, labns.inode, port, lambda c: c.accepted >= 3)
        first = tracker.apply(snap(1.0), probes.read(), probes).listeners[0]
        assert first.accepted == 3
        _d, _s, socks2 = connect_all(labns, port, 2)
        time.sleep(0.3)
        accept_n(srv, 2, 0)
        listener_of(probes, labns.inode, port, lambda c: c.accepted >= 5)
        second = tracker.apply(snap(2.0), probes.read(), probes).listeners[0]
        assert second.accepted == 5 and second.accepted_rate == pytest.approx(1.0)
        assert second.accept_wait is not None and second.accept_wait.count == 5
        recent = second.accept_wait_recent
        assert recent is not None and recent.count == 2
        assert recent.p50_s is not None and recent.p50_s >= 0.25
        for s in socks + socks2:
            s.close()
    finally:
        srv.close()



# ---------------------------------------------------------------------- kretprobe program


def test_kretprobe_and_perf_buffer_programs_pass_this_verifier(root) -> None:
    """The accept paths this kernel does not take by itself: compiled and loaded, not attached."""
    try:
        import bcc
    except ImportError:
        need(False, "needs bcc (python3-bpfcc)")
    from tcptop_q.probes.loader import kernel_source_env
    from tcptop_q.probes.plan import build_plan
    from tests.unit.test_accept_plan import _formats

    assert kernel_source_env() is None
    for kw in ({"kprobes": True, "kallsyms": frozenset({"inet_csk_accept"}), "blacklist": frozenset()},
               {"kprobes": False, "ringbuf": False}):
        plan = build_plan(formats=_formats(), **kw)
        assert "accepted" in plan.hooks
        b = bcc.BPF(text=plan.body, cflags=plan.cflags)
        try:
            for kind, _target, fn in [*plan.attach, *plan.fallbacks.values()]:
                b.load_func(fn.encode(), bcc.BPF.KPROBE if kind in ("kprobe", "kretprobe") else
                            bcc.BPF.RAW_TRACEPOINT if kind == "raw_tracepoint" else bcc.BPF.TRACEPOINT)
        finally:
            b.cleanup()


# ---------------------------------------------------------------------- end to end (CLI)


def test_seed_experiment_json_queued_6_accepted_0_six_waiting(labns, root) -> None:
    """`tcpq-top --batch --json`: the numbers a script reads, for the seed experiment."""
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "needs bcc (python3-bpfcc)")
    from tests.kernel.test_bpf_cli import Batch

    server = labns.serve(timeout=60, addr="0.0.0.0", port=8080, backlog=5, mode="no-accept")  # 60: TCG VMs
    run = Batch("-d", "0.3", "--netns", str(labns.inode))
    try:
        first = run.wait_for(lambda s: s["sources"]["bpf"])
        assert first["sources"]["hooks"]["accepted"].startswith(("tracepoint:syscalls:", "kretprobe:"))
        t0 = time.time()
        assert labns.clients(addr="127.0.0.1", port=8080, count=10, connect_timeout=0.3, gap=0.05) == 6
        after = time.time()
        snap = run.wait_for(lambda s: s["time"] > after and len(
            [cw for cw in s["close_wait"] if cw["lport"] == 8080 and cw["queued_s"] is not None]) == 6)
        lst = next(x for x in snap["listeners"] if x["lport"] == 8080)
        assert (lst["queued"], lst["accepted"], lst["accepts"]) == (6, 0, 6)
        assert lst["accept_wait"]["count"] == 0 and lst["accept_wait"]["p99_s"] is None
        assert lst["pid"] == server.pid
        waiting = [cw for cw in snap["close_wait"] if cw["lport"] == 8080]
        assert len(waiting) == 6 and all(cw["inode"] == 0 for cw in waiting)
        # Time in the queue: at most since the clients started, growing with the clock.
        assert all(0 <= cw["queued_s"] <= snap["time"] - t0 + 0.5 for cw in waiting)
        assert any("io_uring" in n for n in snap["sources"]["notes"]) == (
            not snap["sources"]["hooks"]["accepted"].startswith("kretprobe:"))
    finally:
        run.stop()


def test_recycled_listener_address_starts_a_fresh_histogram(labns, probes: BpfProbes) -> None:
    """Listeners closed and re-opened on one port: the slab hands the next one the same struct
    sock address (seen in the 6.1 VM); its histogram must hold its own accepts only."""
    port = 8097
    addrs = set()
    for i in range(12):
        srv = in_ns(labns, listen, port)
        try:
            _d, _s, socks = connect_all(labns, port, 1)
            time.sleep(0.01 * (i % 3))
            conn, _peer = srv.accept()
            counts = listener_of(probes, labns.inode, port, lambda c: c.accepted >= 1)
            assert counts.accepted == 1 and counts.accept_wait is not None
            assert counts.accept_wait.count == sum(counts.accept_wait.buckets.values()) == 1, (i, counts.accept_wait)
            assert counts.handshake is not None and counts.handshake.count == sum(counts.handshake.buckets.values())
            conn.close()
            for s in socks:
                s.close()
        finally:
            srv.close()
        reading = probes.read()
        addrs.add(len([k for k in reading.listeners if k.netns == labns.inode and k.lport == port]))
    assert addrs == {0}  # each closed listener is gone from the kernel's map
