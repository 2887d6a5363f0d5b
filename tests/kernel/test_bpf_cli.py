"""tcpq-top with its eBPF probes live, end to end through the CLI, checked against nstat/ss,
and every exit path leaves no program of ours loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tcptop_q.probes.synq import KERNEL_NAME
from tests.conftest import ROOT, need


def prog_ids_of(pid: int) -> set[int]:
    """BPF program ids a process holds, from /proc/PID/fdinfo (other test runs may hold their own)."""
    ids = set()
    fdinfo = f"/proc/{pid}/fdinfo"
    for fd in os.listdir(fdinfo):
        try:
            with open(f"{fdinfo}/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def loaded_programs() -> dict[int, str]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    return {p["id"]: p.get("name", "?") for p in json.loads(out or "[]")}


class Batch:
    """A running `tcpq-top --batch --json`; lines are collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcptop_q", "--batch", "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def wait_for(self, pred, timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        seen = len(self.lines)
        while time.monotonic() < deadline:
            for snap in self.lines[seen:]:
                if pred(snap):
                    return snap
            seen = len(self.lines)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"condition not met; rc={self.proc.poll()} stderr={self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def next_after(self, t: float) -> dict:
        return self.wait_for(lambda s: s["time"] > t, timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


def test_seed_experiment_1_with_probes_live(labns, bpf):
    server = labns.serve(addr="0.0.0.0", port=8080, backlog=5, mode="no-accept")
    run = Batch("-d", "0.3", "--netns", str(labns.inode))
    try:
        first = run.wait_for(lambda s: s["sources"]["bpf"])
        assert first["sources"]["bpf_error"] is None
        before = labns.tcpext()
        assert labns.clients(addr="127.0.0.1", port=8080, count=10, connect_timeout=0.3, gap=0.05) == 6
        after = labns.tcpext()
        snap = run.next_after(time.time() + 0.1)
        lst = next(x for x in snap["listeners"] if x["lport"] == 8080)
        assert lst["accepts"] == 6  # six children queued (sock:sk_data_ready on the listener)
        nstat = json.loads(labns.run(["nstat", "-a", "-s", "-z", "-j"]).stdout)
        nstat = nstat.get("kernel", nstat)
        assert lst["accepts"] == int(nstat["TcpPassiveOpens"])  # the kernel's count of children made
        assert lst["peak_accept_queue"] == 6
        assert lst["overflows"] == after["ListenOverflows"] - before["ListenOverflows"] > 0
        assert lst["pid"] == server.pid
        cws = [cw for cw in snap["close_wait"] if cw["lport"] == 8080]
        assert len(cws) == 6
        # the age comes from the ESTABLISHED->CLOSE_WAIT event: seconds, not unknown
        assert all(cw["age_s"] is not None and 0 <= cw["age_s"] < 30 for cw in cws)
    finally:
        assert run.stop(signal.SIGTERM) in (0, 128 + signal.SIGTERM)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_every_signal_detaches_the_probes(bpf, sig):
    run = Batch("-d", "0.2", "--port", "1")
    try:
        run.wait_for(lambda s: s["sources"]["bpf"])
        held = prog_ids_of(run.proc.pid)
        names = loaded_programs()
        # ours: tq_*, and the tcp iterator (probes/synq.py: the kernel names it "tcp")
        assert held and all(names[i].startswith("tq_") or names[i] == KERNEL_NAME for i in held), (held, names)
    finally:
        rc = run.stop(sig)
    err = run.proc.stderr.read()
    assert rc in (0, 130, 128 + sig), err
    assert "Traceback" not in err
    # Its programs are gone from the kernel (no pins, no process left holding them).
    deadline = time.monotonic() + 5
    while held & loaded_programs().keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not held & loaded_programs().keys()


def test_once_waits_for_bpf_and_detaches(bpf):
    proc = subprocess.run([sys.executable, "-m", "tcptop_q", "--once", "--json", "--interval", "0.2"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    assert snap["sources"]["bpf"] is True
    assert "accepts" in snap["sources"]["hooks"]
    assert all(lst["accepts"] is not None for lst in snap["listeners"])


def test_ebpf_flag_prints_program_without_root(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "tcptop_q", "--ebpf"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "inet_sock_set_state" in proc.stdout and "hooks on this kernel" in proc.stdout


def test_children_counts_between_full_dumps_follow_bpf(labns, bpf):
    """A full child dump, then six connections arrive: without another dump, the counts
    (dump + BPF transition deltas) already equal what ss sees."""
    from tcptop_q.sampler import Sampler
    from tcptop_q.source import load_bpf

    labns.serve(addr="0.0.0.0", port=8095, backlog=5, mode="no-accept")
    probes, error = load_bpf(None, labns.inode)
    assert probes is not None, error
    probes.start()
    assert probes.wait_ready(90), probes.error
    sampler = Sampler(bpf=probes, netns=labns.inode, blocking_owners=True)
    try:
        first = sampler.sample(0.2, children=True)
        assert next(x for x in first.listeners if x.lport == 8095).children == {"ESTABLISHED": 0, "CLOSE_WAIT": 0}
        assert labns.clients(addr="127.0.0.1", port=8095, count=8, connect_timeout=0.2, gap=0.02) == 6
        time.sleep(0.2)
        snap = sampler.sample(0.2, children=False)
        assert snap.connections is None  # no dump this tick
        lst = next(x for x in snap.listeners if x.lport == 8095)
        ss_cw = labns.run(["ss", "-tnH", "state", "close-wait"]).stdout.splitlines()
        assert lst.children.get("CLOSE_WAIT") == len(ss_cw) == 6
        assert lst.children.get("ESTABLISHED") == 0
    finally:
        sampler.close()
        probes.close()


def test_synack_retransmits_equal_the_netns_tcpsynretrans(root, bpf):
    """SYN-ACKs that are never answered (syn-flood-cookies lab: they go to a MAC nobody has):
    the listener's synack_retrans equals the netns' TcpExt TCPSynRetrans, which tcp_rtx_synack
    counts next to the tracepoint."""
    from tcptop_q.lab.scenarios import run_scenario
    from tcptop_q.sampler import Sampler
    from tcptop_q.source import load_bpf

    probes, error = load_bpf(8443, None)
    assert probes is not None, error
    probes.start()
    try:
        assert probes.wait_ready(90), probes.error
        with run_scenario("syn-flood-cookies", duration=2) as (ns, info):
            ns.sysctl("net.ipv4.tcp_synack_retries", "1")  # per netns: a short, finite tail
            sampler = Sampler(bpf=probes, netns=ns.inode, blocking_owners=True)
            try:
                last, stable, deadline = -1, 0, time.monotonic() + 40
                while stable < 2 and time.monotonic() < deadline:
                    time.sleep(1.5)
                    now = ns.tcpext().get("TCPSynRetrans", 0)
                    stable = stable + 1 if now == last else 0
                    last = now
                snap = sampler.sample(0.5)
                lst = next(x for x in snap.listeners if x.lport == info["port"])
                assert last > 0
                assert lst.synack_retrans == last
            finally:
                sampler.close()
    finally:
        probes.close()


RESET_SCRIPT = r"""
import socket, time
srv = socket.socket(); srv.bind(("127.0.0.1", 8099)); srv.listen(8)
for _ in range(3):
    c = socket.create_connection(("127.0.0.1", 8099))
    c.sendall(b"unread")
    conn, _ = srv.accept()
    time.sleep(0.05)
    conn.close()  # data never read: the kernel aborts the connection with a RST
    time.sleep(0.05)
    c.close()
print("done", flush=True)  # the three aborts are done
time.sleep(3)  # the listener stays open while the test samples
"""


def test_resets_sent_equal_the_netns_tcpoutrsts(labns, bpf):
    """A server that closes connections with unread data sends one RST each (tcp_send_reset,
    charged to the listener of that port); the netns' TcpOutRsts counts the same RSTs."""
    from tcptop_q.sampler import Sampler
    from tcptop_q.source import load_bpf

    probes, error = load_bpf(8099, labns.inode)
    assert probes is not None, error
    probes.start()
    sampler = None
    try:
        assert probes.wait_ready(90), probes.error
        if "resets_sent" not in probes.hooks:
            need(False, "this kernel has no tcp:tcp_send_reset tracepoint")
        sampler = Sampler(bpf=probes, netns=labns.inode, blocking_owners=True)
        server = labns.spawn([sys.executable, "-c", RESET_SCRIPT], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "done"  # listener still open
        nstat = json.loads(labns.run(["nstat", "-a", "-s", "-z", "-j"]).stdout)
        nstat = nstat.get("kernel", nstat)
        snap = sampler.sample(0.2)
        lst = next(x for x in snap.listeners if x.lport == 8099)
        assert int(nstat["TcpOutRsts"]) == 3
        assert lst.resets_sent == int(nstat["TcpOutRsts"])
        server.wait(timeout=10)
    finally:
        if sampler is not None:
            sampler.close()
        probes.close()
