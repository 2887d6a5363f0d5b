"""A scripted SnapshotSource: seed experiment 1 plus a few healthy listeners, fixed clock.

Experiment 1: a server on 0.0.0.0:8080 calls listen(fd, 5) and never accept()s;
clients keep connecting. The accept queue sits at 6 (backlog+1), sk_drops rises by
10 a second, six children whose peers already closed sit in CLOSE_WAIT with 11
unread bytes each.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from tcptop_q.attribution import attribute_snapshot
from tcptop_q.model import (
    CloseWait,
    Connection,
    Listener,
    ListenerKey,
    NetnsCounters,
    Snapshot,
    Sources,
    Transition,
)

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
HOST_NS = 4026531840
CONTAINER_NS = 4026532290
SERVER_PID = 1234
KEY_8080 = ListenerKey(HOST_NS, "ipv4", "0.0.0.0", 8080, cookie=4097)
KEY_SSH = ListenerKey(HOST_NS, "ipv4", "0.0.0.0", 22, cookie=11)
KEY_HTTPS6 = ListenerKey(HOST_NS, "ipv6", "::", 443, cookie=12)
KEY_HTTP = ListenerKey(HOST_NS, "ipv4", "0.0.0.0", 80, cookie=13)
KEY_REDIS = ListenerKey(CONTAINER_NS, "ipv4", "127.0.0.1", 6379, cookie=21)
KEY_PG = ListenerKey(CONTAINER_NS, "ipv4", "10.0.3.2", 5432, cookie=22)

CLIENT_PORTS = (41000, 41002, 41004, 41006, 41008, 41010)


def _listener(key: ListenerKey, **kw) -> Listener:
    base = dict(
        inode=100000 + key.lport,
        pid=None,
        comm=None,
        accept_queue=0,
        backlog=4096,
        syn_queue=0,
        drops=0,
        drop_rate=0.0,
        children={},
        overflows=0,
        overflow_rate=0.0,
        synack_retrans=0,
        synack_retrans_rate=0.0,
        queued=0,
        queued_rate=0.0,
        peak_accept_queue=0,
    )
    base.update(kw)
    return Listener(key=key, **base)  # type: ignore[arg-type]


def close_waits(tick: int, now: float) -> list[CloseWait]:
    return [
        CloseWait(
            netns=HOST_NS,
            family="ipv4",
            laddr="127.0.0.1",
            lport=8080,
            raddr="127.0.0.1",
            rport=port,
            inode=200000 + i,
            cookie=5000 + i,
            pid=SERVER_PID,
            comm="server",
            recv_q=11,
            age_s=30.0 + 5 * i + tick,
        )
        for i, port in enumerate(CLIENT_PORTS)
    ] + [
        CloseWait(
            netns=CONTAINER_NS,
            family="ipv4",
            laddr="10.0.3.2",
            lport=5432,
            raddr="10.0.3.9",
            rport=50000,
            inode=300001,
            cookie=6001,
            pid=4321,
            comm="postgres",
            recv_q=0,
            age_s=2.0 + tick,
        )
    ]


def timeline_for(rport: int, t: float = T0) -> list[Transition]:
    base = T0 - 40 - (CLIENT_PORTS.index(rport) * 5 if rport in CLIENT_PORTS else 0)
    common = dict(
        netns=HOST_NS,
        skaddr=0xFFFF8880DEAD0000 + rport,
        family="ipv4",
        laddr="127.0.0.1",
        lport=8080,
        raddr="127.0.0.1",
        rport=rport,
    )
    return [
        Transition(
            time=base, old="LISTEN", new="SYN_RECV", ms_in_old=None, pid=0, comm="swapper/1", **common
        ),
        Transition(
            time=base + 0.0001,
            old="SYN_RECV",
            new="ESTABLISHED",
            ms_in_old=0.1,
            pid=0,
            comm="swapper/1",
            **common,
        ),
        Transition(
            time=base + 5.0,
            old="ESTABLISHED",
            new="CLOSE_WAIT",
            ms_in_old=4999.9,
            pid=777,
            comm="client",
            **common,
        ),
    ]


def build_snapshot(
    tick: int,
    *,
    interval: float = 1.0,
    extra: list[Listener] | None = None,
    bpf_state: str = "live",
    swap_order: bool = False,
) -> Snapshot:
    """The scripted snapshot for one tick; deterministic in `tick`."""
    now = T0 + tick * interval
    drops = 120 + 10 * tick
    listeners = [
        _listener(
            KEY_8080,
            inode=90001,
            pid=SERVER_PID,
            comm="server",
            accept_queue=6,
            backlog=5,
            syn_queue=0,
            drops=drops,
            drop_rate=10.0,
            overflows=drops,
            overflow_rate=10.0,
            synack_retrans=3 * tick,
            synack_retrans_rate=3.0,
            queued=0,
            queued_rate=0.0,
            peak_accept_queue=6,
            children={"ESTABLISHED": 0, "CLOSE_WAIT": 6},
        ),
        _listener(
            KEY_SSH,
            pid=812,
            comm="sshd",
            backlog=128,
            queued=40 + tick,
            queued_rate=0.0,
            children={"ESTABLISHED": 2},
        ),
        _listener(
            KEY_HTTP,
            pid=900,
            comm="nginx",
            backlog=511,
            accept_queue=1,
            peak_accept_queue=3,
            queued=5000 + 85 * tick,
            queued_rate=85.0,
            children={"ESTABLISHED": 17},
        ),
        _listener(
            KEY_HTTPS6,
            pid=900,
            comm="nginx",
            backlog=511,
            queued=9000 + 120 * tick,
            queued_rate=120.0,
            children={"ESTABLISHED": 31},
        ),
        _listener(
            KEY_REDIS,
            pid=None,
            comm=None,
            backlog=511,
            overflows=None,
            overflow_rate=None,
            synack_retrans=None,
            synack_retrans_rate=None,
            queued=None,
            queued_rate=None,
            peak_accept_queue=None,
        ),
        _listener(
            KEY_PG,
            pid=4321,
            comm="postgres",
            backlog=244,
            syn_queue=2,
            drops=4,
            drop_rate=2.0 if swap_order else 0.0,
            overflow_rate=25.0 if swap_order else 0.0,
            overflows=30,
            queued=12,
            children={"ESTABLISHED": 3, "CLOSE_WAIT": 1},
        ),
    ]
    listeners += extra or []
    sources = Sources(
        netlink=True,
        bpf=bpf_state == "live",
        bpf_state=bpf_state,
        bpf_error="kprobes disabled; tracepoints only" if bpf_state == "off" else None,
        hooks={"queued": "tracepoint:sock:sk_data_ready"},
        lost_events=tick * 2,
    )
    netns = [
        NetnsCounters(
            HOST_NS,
            {"ListenOverflows": drops, "ListenDrops": drops},
            rates={"ListenOverflows": 10.0, "ListenDrops": 10.0},
            sysctls={
                "somaxconn": 4096,
                "tcp_max_syn_backlog": 512,
                "tcp_syncookies": 1,
                "tcp_abort_on_overflow": 0,
            },
        ),
        NetnsCounters(
            CONTAINER_NS,
            {"ListenOverflows": 0, "ListenDrops": 4},
            rates={"ListenOverflows": 0.0, "ListenDrops": 0.0},
            sysctls={
                "somaxconn": 4096,
                "tcp_max_syn_backlog": 256,
                "tcp_syncookies": 1,
                "tcp_abort_on_overflow": 0,
            },
        ),
    ]
    events = []
    for i, port in enumerate((42000 + tick * 3, 42001 + tick * 3)):
        common = dict(
            netns=HOST_NS,
            skaddr=0xFFFF888000000000 + port,
            family="ipv4",
            laddr="127.0.0.1",
            lport=8080,
            raddr="127.0.0.1",
            rport=port,
            pid=0,
            comm="swapper/0",
        )
        events.append(
            Transition(time=now - 0.5 + i * 0.1, old="LISTEN", new="SYN_RECV", ms_in_old=None, **common)
        )
        events.append(
            Transition(
                time=now - 0.5 + i * 0.1 + 0.0002, old="SYN_RECV", new="ESTABLISHED", ms_in_old=0.2, **common
            )
        )
    events.append(
        Transition(
            time=now - 0.2,
            netns=HOST_NS,
            skaddr=0xFFFF888000001000,
            family="ipv4",
            laddr="127.0.0.1",
            lport=8080,
            raddr="127.0.0.1",
            rport=41000 + tick,
            old="ESTABLISHED",
            new="CLOSE_WAIT",
            ms_in_old=5000.0,
            pid=777,
            comm="client",
        )
    )
    connections = None
    if tick % 5 == 0:
        connections = {
            KEY_8080: [
                Connection(
                    netns=HOST_NS,
                    family="ipv4",
                    state="CLOSE_WAIT",
                    laddr="127.0.0.1",
                    lport=8080,
                    raddr="127.0.0.1",
                    rport=port,
                    inode=200000 + i,
                    cookie=5000 + i,
                    recv_q=11,
                    send_q=0,
                    pid=SERVER_PID,
                    comm="server",
                    age_s=30.0 + 5 * i + tick,
                )
                for i, port in enumerate(CLIENT_PORTS)
            ],
            KEY_HTTP: [
                Connection(
                    netns=HOST_NS,
                    family="ipv4",
                    state="ESTABLISHED",
                    laddr="10.0.0.5",
                    lport=80,
                    raddr=f"192.0.2.{10 + i}",
                    rport=33000 + i,
                    inode=210000 + i,
                    cookie=7000 + i,
                    recv_q=0,
                    send_q=0,
                    pid=900,
                    comm="nginx",
                    age_s=1.0 + i,
                )
                for i in range(17)
            ],
        }
    # Sockets carry their listener, as the sampler gives them.
    return attribute_snapshot(Snapshot(
        time=now,
        interval=interval,
        kernel="6.18.0-test",
        hostname="testhost",
        sources=sources,
        netns=netns,
        listeners=listeners,
        close_wait=close_waits(tick, now),
        events=events,
        connections=connections,
        seq=tick,
    ))


def many_listeners(n: int, tick: int, changing: float = 1.0) -> list[Listener]:
    """n synthetic listeners; a `changing` fraction of them change counters each tick."""
    out = []
    for i in range(n):
        key = ListenerKey(
            HOST_NS + (i % 4),
            "ipv4",
            f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            10000 + i % 50000,
            cookie=100000 + i,
        )
        moving = (i % 1000) < changing * 1000
        t = tick if moving else 0
        out.append(
            _listener(
                key,
                inode=500000 + i,
                pid=2000 + i % 300,
                comm=f"worker{i % 300}",
                accept_queue=(i + t) % 8,
                backlog=128,
                syn_queue=(i * 7 + t) % 3,
                drops=i + t * (i % 5),
                drop_rate=float((i + t) % 5),
                overflows=t,
                overflow_rate=float((i * 3 + t) % 7) if moving else 0.0,
                queued=t * 10,
                queued_rate=float((i + t) % 13),
                children={"ESTABLISHED": (i + t) % 20, "CLOSE_WAIT": (i + t) % 3},
            )
        )
    return out


class FakeSource:
    """Implements tcptop_q.app.SnapshotSource from build_snapshot()."""

    def __init__(
        self,
        *,
        interval: float = 1.0,
        ticks: int | None = None,
        bpf_state: str = "live",
        extra: list[Listener] | None = None,
    ) -> None:
        self.interval = interval
        self.tick = 0
        self.ticks = ticks
        self.bpf_state = bpf_state
        self.extra = extra
        self.closed = False
        self.sample_threads: set[str] = set()
        self.info_threads: set[str] = set()
        self.process_info_calls: list[int] = []
        self._lock = threading.Lock()

    def sample(self) -> Snapshot:
        self.sample_threads.add(threading.current_thread().name)
        with self._lock:
            tick = self.tick
            if self.ticks is None or self.tick < self.ticks - 1:
                self.tick += 1
        return build_snapshot(tick, interval=self.interval, extra=self.extra, bpf_state=self.bpf_state)

    def timeline(self, netns, family, laddr, lport, raddr, rport) -> list[Transition]:
        if lport == 8080 and rport in CLIENT_PORTS:
            return timeline_for(rport)
        if lport == 8080 and rport >= 42000:
            snap = build_snapshot(max(0, (rport - 42000) // 3))
            return [replace(e) for e in snap.events if e.rport == rport]
        return []

    def process_info(self, pid: int) -> dict | None:
        self.info_threads.add(threading.current_thread().name)
        self.process_info_calls.append(pid)
        if pid == SERVER_PID:
            return {
                "pid": SERVER_PID,
                "ppid": 1000,
                "user": "app",
                "cmdline": ["./server", "--port", "8080"],
                "started": T0 - 3600,
                "threads": 1,
                "fds": 12,
                "cpu_percent": 0.0,
                "rss": 3 * 1024 * 1024,
            }
        if pid == 900:
            return {
                "pid": 900,
                "ppid": 1,
                "user": "www-data",
                "cmdline": ["nginx: worker process"],
                "started": T0 - 86400,
                "threads": 1,
                "fds": 60,
                "cpu_percent": 2.5,
                "rss": 12 << 20,
            }
        return None

    def netns_sysctls(self, netns: int) -> dict[str, int]:
        return {
            "somaxconn": 4096,
            "tcp_max_syn_backlog": 512,
            "tcp_syncookies": 1,
            "tcp_abort_on_overflow": 0,
        }

    def close(self) -> None:
        self.closed = True


CLOCK_TICK = 5  # tests apply ticks 0..5; the clock stands at the last one


def fixed_clock() -> float:
    return T0 + CLOCK_TICK
