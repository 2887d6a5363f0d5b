"""Children by state between full dumps: request sockets (SYN_RECV) are counted from every
tick's dump, so `children` equals `ss` in every report (issue 17, TCP_DEFER_ACCEPT case)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

PORT = 8097
CLIENTS = 6

# Connect CLIENTS sockets (the server's TCP_DEFER_ACCEPT keeps each as a request socket,
# since the bare third ACK carries no data), then send on a line from stdin, then exit on EOF.
CLIENT = f"""
import socket, sys
socks = []
for _ in range({CLIENTS}):
    c = socket.create_connection(("127.0.0.1", {PORT}), timeout=5)
    socks.append(c)
print("connected", flush=True)
sys.stdin.readline()
for c in socks:
    c.sendall(b"hello")
print("sent", flush=True)
sys.stdin.read()
"""

SS_STATES = {
    "ESTAB": "ESTABLISHED", "SYN-RECV": "SYN_RECV", "CLOSE-WAIT": "CLOSE_WAIT", "FIN-WAIT-1": "FIN_WAIT1",
    "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT", "LAST-ACK": "LAST_ACK", "CLOSING": "CLOSING",
    "SYN-SENT": "SYN_SENT",
}


def ss_children(labns) -> dict[str, int]:
    """The listener's children by state as the kernel's ss lists them (local port PORT, not LISTEN)."""
    out = labns.run(["ss", "-tanH", "state", "all", f"sport = :{PORT}"]).stdout
    states = Counter(SS_STATES.get(line.split()[0], line.split()[0]) for line in out.splitlines() if line.strip())
    states.pop("LISTEN", None)
    return dict(states)


def nonzero(counts) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def report_equals_ss(sampler, labns, reports: int = 3) -> list[dict[str, int]]:
    """`reports` consecutive reports (no full dump among them), each equal to ss read just before
    and just after it (a report taken while the sockets moved is taken again, up to a deadline)."""
    seen = []
    deadline = time.monotonic() + 30
    while len(seen) < reports:
        before = ss_children(labns)
        snap = sampler.sample(0.2)
        after = ss_children(labns)
        assert snap.connections is None, "a full child dump ran: this test is about the ticks between them"
        lst = next((x for x in snap.listeners if x.lport == PORT), None)
        assert lst is not None, ("no row for the listener", [(x.laddr, x.lport) for x in snap.listeners],
                                 snap.sources, before, after)
        if before != after:
            assert time.monotonic() < deadline, f"ss never settled: {before} vs {after}"
            continue
        assert nonzero(lst.children) == before, (lst.children, lst.syn_queue)
        assert lst.syn_queue == before.get("SYN_RECV", 0)
        seen.append(before)
        time.sleep(0.2)
    return seen


def wait_ss(labns, want: dict[str, int], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while ss_children(labns) != want:
        assert time.monotonic() < deadline, f"ss shows {ss_children(labns)}, waited for {want}"
        time.sleep(0.05)


def test_defer_accept_children_equal_ss_in_every_report(labns, bpf):
    from tcptop_q.sampler import Sampler
    from tcptop_q.source import load_bpf

    # The server outlives a slow bcc compile (30-70 s in a TCG guest; its default life is 60 s).
    labns.serve(addr="127.0.0.1", port=PORT, backlog=16, mode="no-accept", defer_accept=60, duration=600)
    probes, error = load_bpf(None, labns.inode)
    assert probes is not None, error
    probes.start()
    assert probes.wait_ready(90), probes.error
    sampler = Sampler(bpf=probes, netns=labns.inode, blocking_owners=True, children_every=3600)
    client = None
    try:
        first = sampler.sample(0.2, children=True)  # the only full dump of this test: before any client
        assert nonzero(next(x for x in first.listeners if x.lport == PORT).children) == {} == ss_children(labns)

        client = labns.spawn([sys.executable, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline().strip() == "connected"
        wait_ss(labns, {"SYN_RECV": CLIENTS})  # request sockets: no state event fires for them
        assert report_equals_ss(sampler, labns) == [{"SYN_RECV": CLIENTS}] * 3

        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "sent"
        wait_ss(labns, {"ESTABLISHED": CLIENTS})  # data arrived: full children, queued, never accepted
        assert report_equals_ss(sampler, labns) == [{"ESTABLISHED": CLIENTS}] * 3
    finally:
        if client is not None and client.poll() is None:
            client.stdin.close()
            client.wait(timeout=10)
        sampler.close()
        probes.close()
