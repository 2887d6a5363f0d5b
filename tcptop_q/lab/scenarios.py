"""Named kernel scenarios, each in a private network namespace, bounded in time.

`run_scenario(name, duration)` is a context manager yielding (LabNetns, info): the server and
client processes are running when it yields, and everything (processes, netns, veth) is gone
when it exits, whatever the exit path. Traffic stays on the netns' loopback, or on a veth pair
between two netns the scenario creates. Per-netns sysctls are set only inside those netns.
Every worker is also given the duration, so it ends by itself even if this process is killed.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .netns import LabError, LabNetns

MAX_DURATION = 24 * 3600.0
GRACE = 5.0  # workers outlive the scenario by this much, so the parent always ends them first

# The veth pair of syn-flood-cookies: a benchmarking range (RFC 2544), private to the two netns.
SERVER_ADDR = "198.18.0.1"
CLIENT_ADDR = "198.18.0.2"
BOGUS_MAC = "02:00:00:00:00:02"  # where the server "sends" its SYN-ACKs: nobody has it


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str  # one line for `lab list`
    expect: str  # what tcpq-top (and ss/nstat) should show
    start: Callable[[LabNetns, float, contextlib.ExitStack], dict[str, Any]]
    seed: str = ""
    counters: tuple[str, ...] = field(default=("ListenOverflows", "ListenDrops"))


def _bounded(duration: float) -> float:
    return duration + GRACE


# ----------------------------------------------------------------- the scenarios


def _no_accept(ns: LabNetns, duration: float, _stack: contextlib.ExitStack) -> dict[str, Any]:
    port = 8080
    srv = ns.worker("serve", ready=True, addr="0.0.0.0", port=port, backlog=5, mode="no-accept",
                    duration=_bounded(duration))
    ns.worker("clients", addr="127.0.0.1", port=port, count=10, connect_timeout=0.3, gap=0.05,
              rounds=0, round_gap=5, duration=duration)
    return {"port": port, "server_pid": srv.pid, "listen": f"0.0.0.0:{port}", "backlog": 5}


def _client_closes(ns: LabNetns, duration: float, _stack: contextlib.ExitStack) -> dict[str, Any]:
    port = 8090
    srv = ns.worker("serve", ready=True, addr="127.0.0.1", port=port, backlog=64, mode="read-until-eof",
                    duration=_bounded(duration))
    ns.worker("clients", addr="127.0.0.1", port=port, count=5, gap=0.1, connect_timeout=1,
              rounds=0, round_gap=2, duration=duration)
    return {"port": port, "server_pid": srv.pid, "listen": f"127.0.0.1:{port}", "backlog": 64}


def _server_closes(ns: LabNetns, duration: float, _stack: contextlib.ExitStack) -> dict[str, Any]:
    port = 8000
    srv = ns.worker("serve", ready=True, addr="127.0.0.1", port=port, backlog=64, mode="echo-close",
                    duration=_bounded(duration))
    ns.worker("clients", addr="127.0.0.1", port=port, count=5, gap=0.1, connect_timeout=1, hold=0.5,
              rounds=0, round_gap=2, duration=duration)
    return {"port": port, "server_pid": srv.pid, "listen": f"127.0.0.1:{port}", "backlog": 64}


def _ack_overflow(ns: LabNetns, duration: float, _stack: contextlib.ExitStack) -> dict[str, Any]:
    port = 8081
    srv = ns.worker("ack-overflow", ready=True, addr="127.0.0.1", port=port, round_gap=1.0, duration=duration)
    return {"port": port, "server_pid": srv.pid, "listen": f"127.0.0.1:{port}", "backlog": 1}


def _syn_flood_cookies(ns: LabNetns, duration: float, stack: contextlib.ExitStack) -> dict[str, Any]:
    port = 8443
    backlog = 16
    client = LabNetns("labc")
    stack.callback(client.close)

    def ip(*args: str) -> None:
        try:
            subprocess.run(["ip", *args], capture_output=True, text=True, check=True)
        except subprocess.CalledProcessError as exc:
            raise LabError(f"ip {' '.join(args)}: {exc.stderr.strip()}") from None

    ip("-n", ns.name, "link", "add", "tqs0", "type", "veth", "peer", "name", "tqc0", "netns", client.name)
    ip("-n", ns.name, "addr", "add", f"{SERVER_ADDR}/24", "dev", "tqs0")
    ip("-n", client.name, "addr", "add", f"{CLIENT_ADDR}/24", "dev", "tqc0")
    ip("-n", ns.name, "link", "set", "tqs0", "up")
    ip("-n", client.name, "link", "set", "tqc0", "up")
    # The server's SYN-ACKs go to a MAC nobody has: the client's veth discards them as
    # PACKET_OTHERHOST, so no ACK and no RST ever come back and the SYN queue stays full.
    ip("-n", ns.name, "neigh", "replace", CLIENT_ADDR, "lladdr", BOGUS_MAC, "dev", "tqs0", "nud", "permanent")
    # Per-netns sysctls, inside the lab netns only.
    ns.sysctl("net.ipv4.tcp_syncookies", "1")
    srv = ns.worker("serve", ready=True, addr=SERVER_ADDR, port=port, backlog=backlog, mode="no-accept",
                    duration=_bounded(duration))
    client.worker("stream", addr=SERVER_ADDR, port=port, rate=50, payload="", give_up=5, max_pending=400,
                  duration=duration)
    return {
        "port": port, "server_pid": srv.pid, "listen": f"{SERVER_ADDR}:{port}", "backlog": backlog,
        "client_netns": client.name, "client_inode": client.inode,
        "sysctls": {"net.ipv4.tcp_syncookies": 1},
    }


def _close_wait_leak(ns: LabNetns, duration: float, _stack: contextlib.ExitStack) -> dict[str, Any]:
    port = 8082
    srv = ns.worker("serve", ready=True, addr="127.0.0.1", port=port, backlog=64, mode="accept-hold",
                    duration=_bounded(duration))
    ns.worker("clients", addr="127.0.0.1", port=port, count=3, gap=0.05, connect_timeout=1,
              rounds=0, round_gap=2, duration=duration)
    return {"port": port, "server_pid": srv.pid, "listen": f"127.0.0.1:{port}", "backlog": 64}


def _slow_accept(ns: LabNetns, duration: float, _stack: contextlib.ExitStack) -> dict[str, Any]:
    port = 8083
    accept_rate, client_rate, backlog = 5, 25, 16
    srv = ns.worker("serve", ready=True, addr="127.0.0.1", port=port, backlog=backlog, mode="echo-close",
                    accept_rate=accept_rate, duration=_bounded(duration))
    ns.worker("stream", addr="127.0.0.1", port=port, rate=client_rate, give_up=3, max_pending=200,
              duration=duration)
    return {"port": port, "server_pid": srv.pid, "listen": f"127.0.0.1:{port}", "backlog": backlog,
            "accept_rate": accept_rate, "client_rate": client_rate}


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("no-accept", "listen(5) and never accept(); 10 clients connect, send, close every 5 s",
                 "accept queue 6/5 (limit+1), ListenOverflows and drops rising, 6 CLOSE_WAIT with Recv-Q 11",
                 _no_accept, seed="experiment 1"),
        Scenario("client-closes", "the client closes first (nc -l + curl): 5 connections every 2 s",
                 "children ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE; TIME_WAIT on the client side",
                 _client_closes, seed="experiment 2", counters=()),
        Scenario("server-closes", "the server closes first (http.server + curl): 5 connections every 2 s",
                 "children ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT on the server side",
                 _server_closes, seed="experiment 3", counters=()),
        Scenario("ack-overflow", "TCP_DEFER_ACCEPT, backlog 1: a third ACK (first data) meets a full queue, once a second",
                 "ListenOverflows +1/s (third-ACK path, kfree_skb TCP_LISTEN_OVERFLOW), TCPDeferAcceptDrop, drops +2 each",
                 _ack_overflow, counters=("ListenOverflows", "ListenDrops", "TCPDeferAcceptDrop")),
        Scenario("syn-flood-cookies", "SYNs over a veth from a second netns whose SYN-ACKs vanish; backlog 16",
                 "SYN queue full at 17 (backlog 16 + 1), TCPReqQFullDoCookies and SyncookiesSent rising (tcp_syncookies=1 in the netns)",
                 _syn_flood_cookies, counters=("TCPReqQFullDoCookies", "SyncookiesSent", "TCPReqQFullDrop")),
        Scenario("close-wait-leak", "accepts every connection and never closes it; 3 clients every 2 s close",
                 "CLOSE_WAIT sockets owned by the server piling up (+3 every 2 s), Recv-Q 11 each",
                 _close_wait_leak, counters=()),
        Scenario("slow-accept", "accepts 5 connections/s while clients connect 25/s; backlog 16",
                 "accept queue near 17/16, accepts ~5/s, drops and ListenOverflows rising",
                 _slow_accept),
    )
}


def check_duration(value: float) -> float:
    if not value == value or not 0 < value <= MAX_DURATION:  # NaN too
        raise ValueError(f"duration must be between 0 and {MAX_DURATION:g} seconds, not {value:g}")
    return value


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C or SIGTERM during it would leave a netns behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _watch(ns: LabNetns, counters: tuple[str, ...]) -> list[str]:
    return [
        f"tcpq-top --netns {ns.inode}",
        f"ip netns exec {ns.name} ss -tanm",
        f"ip netns exec {ns.name} nstat -az " + " ".join(f"TcpExt{c}" for c in counters),
    ]


@contextlib.contextmanager
def run_scenario(name: str, duration: float = 60.0) -> Iterator[tuple[LabNetns, dict[str, Any]]]:
    """Start scenario `name` in a fresh netns; yield (netns, info); remove everything on exit.

    The caller decides how long to stay inside; the workers stop by themselves after
    `duration` (+ a few seconds), so a killed caller leaves at most an empty netns.
    Raises KeyError for an unknown name, ValueError for a bad duration, LabError when the
    netns cannot be built (not root, no iproute2).
    """
    with run_scenarios([name], duration) as (ns, infos):
        yield ns, infos[0]


@contextlib.contextmanager
def run_scenarios(names: list[str], duration: float = 60.0) -> Iterator[tuple[LabNetns, list[dict[str, Any]]]]:
    """Several scenarios side by side in one netns (their ports never collide)."""
    for name in names:
        if name not in SCENARIOS:
            raise KeyError(f"unknown lab scenario {name!r} (one of: {', '.join(SCENARIOS)})")
    if len(set(names)) != len(names) or not names:
        raise ValueError("each scenario at most once, at least one")
    check_duration(duration)
    stack = contextlib.ExitStack()
    try:
        ns = LabNetns("lab")
        stack.callback(ns.close)
        infos = []
        for name in names:
            scenario = SCENARIOS[name]
            info = scenario.start(ns, duration, stack)
            info.update(
                scenario=name,
                summary=scenario.summary,
                expect=scenario.expect,
                netns=ns.name,
                inode=ns.inode,
                duration=duration,
                started=time.time(),
                watch=_watch(ns, scenario.counters or ("ListenOverflows", "ListenDrops")),
            )
            infos.append(info)
        yield ns, infos
    finally:
        with _signals_held():
            stack.close()


DEMO = ("no-accept", "slow-accept", "close-wait-leak", "ack-overflow", "syn-flood-cookies", "client-closes",
        "server-closes")


def run_demo(duration: float = 3600.0) -> contextlib.AbstractContextManager[tuple[LabNetns, list[dict[str, Any]]]]:
    """Every scenario at once in one netns: what `tcpq-top --demo` watches."""
    return run_scenarios(list(DEMO), duration)


def stale_netns() -> list[str]:
    """Lab netns whose creating process is gone (it was SIGKILLed: nothing could clean up)."""
    import os
    import re

    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    stale = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"tq-labc?-(\d+)-\d+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            stale.append(name)
    return stale


def clean_stale() -> list[tuple[str, int]]:
    """End the processes inside stale lab netns (only lab workers live there) and delete them."""
    import os

    done = []
    for name in stale_netns():
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split() if p.isdigit()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
        done.append((name, len(pids)))
    return done


def describe(info: dict[str, Any]) -> list[str]:
    """What `lab run` prints: where the scenario lives and what to look at."""
    lines = [
        f"lab {info['scenario']}: {info['summary']}",
        f"  netns   {info['netns']} (inode {info['inode']})",
        f"  server  pid {info['server_pid']} listening on {info['listen']} (backlog {info['backlog']})",
    ]
    if "client_netns" in info:
        lines.append(f"  clients netns {info['client_netns']} (inode {info['client_inode']}) over a veth pair")
    lines.append(f"  watch   {info['watch'][0]}")
    lines += [f"          {cmd}" for cmd in info["watch"][1:]]
    lines.append(f"  expect  {info['expect']}")
    return lines
