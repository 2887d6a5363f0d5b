"""Issue 8: the same exact numbers whichever hooks this kernel offers.

Run here (6.18: tracepoints only) and in the Debian 12 VM (6.1: kprobe fallbacks
for accepts, peak depth and overflows) by `make test-compat`. Everything goes
through the real command line (`tcpq-top --batch --json`), so the sampler's
overflow formula is checked too, against the netns' own ListenOverflows.
Assertions do not depend on which hook serves a metric; the hooks are checked
against what the kernel offers in test_hooks_follow_the_kernel.

TQ_COMPAT_RESULTS=<file>: append one JSON line per scenario (kernel, hooks,
numbers) for the VM report.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcptop_q.lab.experiments import listen, seed_clients, third_ack_overflow
from tcptop_q.lab.netns import LabNetns as Netns
from tests.conftest import need
from tests.kernel.test_bpf_cli import Batch, loaded_programs

TRACEFS = Path("/sys/kernel/tracing")


def _record(scenario: str, snap: dict, **numbers: object) -> None:
    path = os.environ.get("TQ_COMPAT_RESULTS")
    if not path:
        return
    row = {"scenario": scenario, "kernel": platform.release(), "hooks": snap["sources"].get("hooks", {}), **numbers}
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def _kprobe_events() -> list[str]:
    try:
        return [ln for ln in (TRACEFS / "kprobe_events").read_text().splitlines() if ln.strip()]
    except OSError:
        return []


@pytest.fixture
def ns():
    need(os.geteuid() == 0, "needs root (network namespaces, BPF)")
    need(Path("/usr/sbin/bpftool").exists() or Path("/usr/bin/bpftool").exists(), "needs bpftool")
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "needs bcc (python3-bpfcc)")
    n = Netns("compat")
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def batch(ns: Netns):
    """tcpq-top --batch --json watching only the test's netns; stopped and checked detached."""
    kprobes_before = set(_kprobe_events())
    run = Batch("-d", "0.3", "--netns", str(ns.inode))
    try:
        first = run.wait_for(lambda s: s["sources"]["bpf"], timeout=300)  # TCG: compiling takes a while
        assert first["sources"]["bpf_error"] is None
        run.first = first
        yield run
    finally:
        rc = run.stop(signal.SIGTERM)
    assert rc in (0, 128 + signal.SIGTERM)
    deadline = time.monotonic() + 5
    while [n for n in loaded_programs().values() if n.startswith("tq_")] and time.monotonic() < deadline:
        time.sleep(0.1)
    # Nothing left attached: no program of ours, no kprobe event bcc created for us.
    # (Other tcpq-top runs on the same host would hold their own; the VM has none.)
    assert set(_kprobe_events()) <= kprobes_before


def _listener(snap: dict, port: int) -> dict:
    rows = [x for x in snap["listeners"] if x["lport"] == port]
    assert len(rows) == 1, snap["listeners"]
    return rows[0]


def test_seed_experiment_1_exact(ns: Netns, batch: Batch) -> None:
    """backlog 5, never accept, 10 clients: 6 queued, the rest overflow on the SYN path."""
    port = 8080
    srv = listen(ns, port, 5)
    before = ns.netstat()
    try:
        established = seed_clients(ns, port)
        after = ns.netstat()
        snap = batch.next_after(time.time() + 0.1)
        lst = _listener(snap, port)
        delta = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
        _record("seed-experiment-1", snap, established=established, accepts=lst["accepts"],
                peak_accept_queue=lst["peak_accept_queue"], overflows=lst["overflows"], listen_overflows_delta=delta,
                drops=lst["drops"])
        assert established == 6
        assert lst["accepts"] == 6
        assert lst["peak_accept_queue"] == 6
        assert lst["overflows"] == delta > 0
    finally:
        srv.close()


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "ipv6-dual-stack"])
def test_third_ack_overflow_exact(ns: Netns, batch: Batch, family: str) -> None:
    """TCP_DEFER_ACCEPT keeps C a request sock while A and B fill the queue (limit 1 holds 2);
    C's data then completes the handshake into a full queue: one third-ACK overflow, which
    adds 2 to sk_drops (and TCP_DEFER_ACCEPT's dropped bare ACKs add more): only a hook that
    sees the overflow itself makes `overflows` exact. ipv6: [::] and ::1 clients
    (tcp_v6_syn_recv_sock's own test); ipv6-dual-stack: [::] and IPv4 clients, whose
    packets go through tcp_v6_syn_recv_sock into the v4 one (counted once). The recipe
    (tcptop_q/lab/experiments.py) waits on the kernel's state at every step and keeps C's data
    from being retransmitted, so "exactly once" holds under QEMU TCG too."""
    port = {"ipv4": 8081, "ipv6": 8087, "ipv6-dual-stack": 8086}[family]
    srv = listen(ns, port, 1, defer_accept=10, family=socket.AF_INET if family == "ipv4" else socket.AF_INET6)
    cfam, dst = (socket.AF_INET6, "::1") if family == "ipv6" else (socket.AF_INET, "127.0.0.1")
    before = ns.netstat()
    socks = []
    try:
        socks = third_ack_overflow(ns, port, cfam, dst)
        after = ns.netstat()
        snap = batch.next_after(time.time() + 0.1)
        lst = _listener(snap, port)
        delta = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
        _record(f"third-ack-{family}", snap, accepts=lst["accepts"], peak_accept_queue=lst["peak_accept_queue"],
                overflows=lst["overflows"], listen_overflows_delta=delta, drops=lst["drops"])
        assert delta == 1, "the recipe overflows exactly once (it waits on ss / nstat / TCP_INFO)"
        assert lst["overflows"] == delta
        assert lst["accepts"] == 2 and lst["peak_accept_queue"] == 2
    finally:
        for s in socks:
            s.close()
        srv.close()


def _tracepoint(hook: str, event: str) -> bool:
    """The hook is tracepoint EVENT, as a raw tracepoint (BTF prototype) or a classic one."""
    return hook in (f"tracepoint:{event}", f"raw_tracepoint:{event}")


def test_hooks_follow_the_kernel(ns: Netns, batch: Batch) -> None:
    """Tracepoints where the kernel has them; the kprobe fallbacks exactly where it does not."""
    hooks = batch.first["sources"]["hooks"]
    have_data_ready = (TRACEFS / "events/sock/sk_data_ready").exists()
    kfree = TRACEFS / "events/skb/kfree_skb/format"
    have_rx_sk = kfree.exists() and "rx_sk" in kfree.read_text()
    kprobes = (TRACEFS / "kprobe_events").exists()
    _record("hooks", batch.first, tracepoint_sk_data_ready=have_data_ready, kfree_skb_rx_sk=have_rx_sk, kprobes=kprobes)
    if have_data_ready:
        assert hooks["accepts"] == hooks["peak_accept_queue"]
        assert _tracepoint(hooks["accepts"], "sock:sk_data_ready"), hooks
    elif kprobes:
        assert hooks["accepts"] == hooks["peak_accept_queue"] == "kprobe:sock_def_readable"
    if have_rx_sk:
        assert _tracepoint(hooks["listen_overflow_drops"], "skb:kfree_skb"), hooks
        assert "syn_overflows" not in hooks
    elif kprobes:
        assert hooks["listen_overflow_drops"].startswith("kprobe:tcp_v4_syn_recv_sock")
        assert hooks["syn_overflows"] == "kprobe:tcp_conn_request"
    assert _tracepoint(hooks["transitions"], "sock:inet_sock_set_state"), hooks
    assert _tracepoint(hooks["synack_retrans"], "tcp:tcp_retransmit_synack"), hooks


def test_ebpf_lists_the_hooks_of_this_kernel() -> None:
    """`tcpq-top --ebpf` names the hook serving each metric, without loading anything."""
    need(os.geteuid() == 0, "needs root (tracefs and kallsyms as the probes see them)")
    proc = subprocess.run([sys.executable, "-m", "tcptop_q", "--ebpf"],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("/* hooks on this kernel:", 1)[1]
    assert "queued" in listed and "transitions" in listed, listed
    if not (TRACEFS / "events/sock/sk_data_ready").exists() and (TRACEFS / "kprobe_events").exists():
        assert "kprobe:sock_def_readable" in listed
        assert "int tq_kp_def_readable(struct pt_regs *ctx)" in proc.stdout
