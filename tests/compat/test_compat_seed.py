"""The seed's three experiments through the real command line, on whatever kernel runs this:
the host (6.18: tracepoints), and the 6.1 and 5.10 guests of `make test-compat` (kprobe
fallbacks). One `tcpq-top --batch --json --record FILE` watches a lab netns for the whole
module (one bcc compile: under TCG that is a minute), each experiment on its own port:

- experiment 1: backlog 5, never accept, 10 clients: 6 queued, peak 6, overflows equal the
  netns ListenOverflows delta, 0 accept() calls;
- the third-ACK overflow (TCP_DEFER_ACCEPT recipe): counted, and charged to the listener it
  happened on, not to its neighbour in the same netns;
- experiments 2 and 3 (client closes first / server closes first): the server child's state
  sequence in the feed (read from the recording) is the seed's;
- after SIGTERM no program the process held is loaded, no kprobe event of ours is left.

TQ_COMPAT_RESULTS=<file>: one JSON line per scenario (kernel, hooks, numbers), for
docs/COMPATIBILITY.md.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import struct
import time
import zlib
from pathlib import Path

import pytest

from tcptop_q.lab.experiments import listen, third_ack_overflow
from tests.conftest import need
from tests.kernel.test_bpf_cli import Batch, loaded_programs, prog_ids_of

TRACEFS = Path("/sys/kernel/tracing")

# The seed's tcpstates output, server side (docs/COMPATIBILITY.md cites it): experiment 2
# (`nc -l 8090`, curl closes first), experiment 3 (`python -m http.server`, server closes first).
SEED_EXP2 = [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "CLOSE_WAIT"),
             ("CLOSE_WAIT", "LAST_ACK"), ("LAST_ACK", "CLOSE")]
SEED_EXP3 = [("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
             ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE")]


def _record(scenario: str, **numbers: object) -> None:
    path = os.environ.get("TQ_COMPAT_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"scenario": scenario, "kernel": platform.release(), **numbers}, sort_keys=True) + "\n")


def _kprobe_events() -> set[str]:
    try:
        return {ln for ln in (TRACEFS / "kprobe_events").read_text().splitlines() if ln.strip()}
    except OSError:
        return set()


def feed_events(path: Path) -> list[dict]:
    """Feed events of a recording that is still being written: the writer sync-flushes the
    gzip stream after every line, so every whole line so far decompresses."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = d.decompress(path.read_bytes()).decode(errors="replace")
    events = []
    for line in text.split("\n")[:-1]:  # the last piece may be a partial line
        rec = json.loads(line)
        if rec.get("kind") == "snap":
            events.extend(rec["events"])
    return events


class Watch:
    """The module's tcpq-top: its Batch, recording, held program ids, time to BPF live."""

    def __init__(self, ns, rec: Path) -> None:
        self.ns = ns
        self.rec = rec
        self.kprobes_before = _kprobe_events()
        t0 = time.monotonic()
        self.batch = Batch("-d", "0.3", "--netns", str(ns.inode), "--record", str(rec))
        self.first = self.batch.wait_for(lambda s: s["sources"]["bpf"], timeout=400)  # TCG: the compile
        self.live_s = time.monotonic() - t0
        self.held = prog_ids_of(self.batch.proc.pid)
        self.stopped: int | None = None

    def snap_after(self, t: float) -> dict:
        return self.batch.next_after(t)

    def listener(self, snap: dict, port: int) -> dict:
        rows = [x for x in snap["listeners"] if x["lport"] == port]
        assert len(rows) == 1, snap["listeners"]
        return rows[0]

    def stop(self) -> int:
        if self.stopped is None:
            self.stopped = self.batch.stop(signal.SIGTERM)
        return self.stopped


@pytest.fixture(scope="module")
def watch(tmp_path_factory):
    need(os.geteuid() == 0, "needs root (network namespaces, BPF)")
    need(Path("/usr/sbin/bpftool").exists() or Path("/usr/bin/bpftool").exists(), "needs bpftool")
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "needs bcc (python3-bpfcc)")
    from tcptop_q.lab.netns import LabNetns

    ns = LabNetns("compat")
    w = None
    try:
        w = Watch(ns, tmp_path_factory.mktemp("rec") / "feed.jsonl.gz")
        assert w.first["sources"]["bpf_error"] is None
        _record("live", hooks=w.first["sources"]["hooks"], notes=w.first["sources"]["notes"],
                time_to_bpf_live_s=round(w.live_s, 1), programs=len(w.held))
        yield w
    finally:
        if w is not None:
            w.stop()
        ns.close()


def test_hooks_are_named_or_the_metric_says_why(watch: Watch) -> None:
    """Every counter the probes can serve has a hook on this kernel, or a note says why not."""
    hooks = watch.first["sources"]["hooks"]
    notes = " | ".join(watch.first["sources"]["notes"])
    for metric in ("accepts", "peak_accept_queue", "listen_overflow_drops", "transitions", "synack_retrans"):
        assert metric in hooks, (metric, hooks, notes)
    if "drop_reasons" not in hooks:
        assert "rx_sk" in notes or "drop reason" in notes, notes
    names = loaded_programs()  # ours: tq_*, and the tcp iterator (probes/synq.py: the kernel names it "tcp")
    assert watch.held and all(names.get(i, "").startswith("tq_") or names.get(i) == "tcp" for i in watch.held)


def test_seed_experiment_1(watch: Watch) -> None:
    """backlog 5, never accept, 10 clients sending helloworld: 6 queued (backlog + 1), peak 6,
    overflows == the netns' ListenOverflows delta, and no accept() call."""
    port = 8080
    watch.ns.serve(timeout=60, addr="0.0.0.0", port=port, backlog=5, mode="no-accept")  # 60: a starved TCG guest
    before = watch.ns.tcpext()
    established = watch.ns.clients(addr="127.0.0.1", port=port, count=10, connect_timeout=1.0, gap=0.05)
    after = watch.ns.tcpext()
    snap = watch.snap_after(time.time() + 0.1)
    lst = watch.listener(snap, port)
    delta = after["ListenOverflows"] - before["ListenOverflows"]
    _record("seed-experiment-1", established=established, queued=lst["queued"], accepted=lst["accepted"],
            peak_accept_queue=lst["peak_accept_queue"], overflows=lst["overflows"], listen_overflows_delta=delta,
            close_wait=lst["children"].get("CLOSE_WAIT"))
    assert established == 6
    assert lst["queued"] == 6
    assert lst["peak_accept_queue"] == 6
    assert lst["overflows"] == delta > 0
    if lst["accepted"] is not None:  # accept() tracking, where this build has it
        assert lst["accepted"] == 0


def test_third_ack_overflow_counted_and_attributed(watch: Watch) -> None:
    """TCP_DEFER_ACCEPT keeps C a request sock while A and B fill the queue (backlog 1 holds 2);
    C's data then completes the handshake into a full queue: ListenOverflows +1 with no SYN
    dropped (tcptop_q/lab/experiments.py: every step waits on ss / nstat / TCP_INFO, C's data
    is sent once and C's request is gone before the counters are read). The listener it
    happened on has it; a neighbour in the same netns has 0."""
    port, quiet = 8091, 8092
    srv, neighbour_srv = listen(watch.ns, port, 1, defer_accept=10), listen(watch.ns, quiet, 1)
    socks = []
    try:
        before = watch.ns.tcpext()
        socks = third_ack_overflow(watch.ns, port)
        after = watch.ns.tcpext()
        snap = watch.snap_after(time.time() + 0.1)
        lst, neighbour = watch.listener(snap, port), watch.listener(snap, quiet)
        delta = after["ListenOverflows"] - before["ListenOverflows"]
        _record("third-ack", overflows=lst["overflows"], listen_overflows_delta=delta, queued=lst["queued"],
                peak_accept_queue=lst["peak_accept_queue"], neighbour_overflows=neighbour["overflows"],
                hook=snap["sources"]["hooks"].get("listen_overflow_drops"))
        assert delta == 1, "the recipe overflows exactly once"
        assert lst["overflows"] == delta
        assert lst["queued"] == 2 and lst["peak_accept_queue"] == 2
        assert neighbour["overflows"] == 0 and neighbour["queued"] == 0
    finally:
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        srv.close()
        neighbour_srv.close()


def _server_child_sequence(watch: Watch, port: int, deadline_s: float = 30.0) -> list[tuple[str, str]]:
    """The (old, new) states of the one server-side child of PORT, once it reached CLOSE."""
    deadline = time.monotonic() + deadline_s
    while True:
        seqs: dict[int, list[tuple[str, str]]] = {}
        for ev in feed_events(watch.rec):
            if ev["netns"] == watch.ns.inode and ev["lport"] == port and (ev["old"], ev["new"]) != ("CLOSE", "LISTEN"):
                seqs.setdefault(ev["skaddr"], []).append((ev["old"], ev["new"]))
        done = [s for s in seqs.values() if s[-1][1] == "CLOSE" and s[0] != ("LISTEN", "CLOSE")]
        if done or time.monotonic() > deadline:
            assert len(done) == 1, seqs
            return done[0]
        time.sleep(0.3)


@pytest.mark.parametrize("experiment", ["2-client-closes-first", "3-server-closes-first"])
def test_seed_experiments_2_and_3_state_sequences(watch: Watch, experiment: str) -> None:
    server_first = experiment.startswith("3")
    port = 8000 if server_first else 8090  # the seed's ports (http.server, nc -l)
    watch.ns.serve(timeout=60, addr="0.0.0.0", port=port, backlog=16, mode="echo-close" if server_first else "read-until-eof")
    # experiment 3: the client holds its end open until the server has closed its own
    n = watch.ns.clients(addr="127.0.0.1", port=port, count=1, hold=1.0 if server_first else 0.0)
    assert n == 1
    seq = _server_child_sequence(watch, port)
    # The seed's 5.10 run also shows one FIN_WAIT1 -> FIN_WAIT1 (tcp_close sets the state it
    # is already in when the FIN goes out later): kept in the record, not a different sequence.
    collapsed = [t for t in seq if t[0] != t[1]]
    _record(f"seed-experiment-{experiment}", sequence=[f"{a}->{b}" for a, b in seq])
    assert collapsed == (SEED_EXP3 if server_first else SEED_EXP2)


def test_resets_sent_equal_the_netns_tcpoutrsts(watch: Watch) -> None:
    """A server closing accepted connections with unread data aborts each with one RST
    (tcp:tcp_send_reset, charged to the listener of that port: 5.10, 6.1 and 6.18 each
    have their own layout of that tracepoint); the netns' TcpOutRsts counts the same RSTs."""
    port, n = 8099, 3
    sock = watch.ns.socket
    srv = sock()
    clients = []
    try:
        srv.bind(("127.0.0.1", port))
        srv.listen(8)
        out_rsts = lambda: int(json.loads(watch.ns.run(["nstat", "-a", "-s", "-z", "-j"]).stdout)  # noqa: E731
                               .get("kernel", {}).get("TcpOutRsts", 0))
        rsts0 = out_rsts()
        for _ in range(n):
            c = sock()
            clients.append(c)
            c.connect(("127.0.0.1", port))
            c.sendall(b"unread")
            conn, _ = srv.accept()
            conn.settimeout(10)
            assert conn.recv(1, socket.MSG_PEEK) == b"u"  # the data is queued, unread, at close
            conn.close()
        deadline = time.monotonic() + 20
        while out_rsts() - rsts0 < n:
            assert time.monotonic() < deadline, "the kernel did not send the RSTs"
            time.sleep(0.1)
        sent = out_rsts() - rsts0
        deadline = time.monotonic() + 20
        while True:
            snap = watch.snap_after(time.time())
            lst = watch.listener(snap, port)
            if lst["resets_sent"] == sent or time.monotonic() > deadline:
                break
        _record("resets", resets_sent=lst["resets_sent"], tcp_out_rsts_delta=sent,
                hook=snap["sources"]["hooks"].get("resets_sent"))
        assert sent == n
        assert lst["resets_sent"] == sent
    finally:
        for c in clients:
            c.close()
        srv.close()


def test_nothing_left_attached_after_exit(watch: Watch) -> None:
    """SIGTERM: the exit status of a clean stop, every program the process held gone from
    the kernel (ids from /proc/PID/fdinfo while it ran), no kprobe event of ours left."""
    held = set(watch.held)
    rc = watch.stop()
    assert rc in (0, 128 + signal.SIGTERM)
    deadline = time.monotonic() + 10
    while held & loaded_programs().keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = held & loaded_programs().keys()
    kprobes_left = _kprobe_events() - watch.kprobes_before
    _record("left-behind", programs_held=len(held), programs_left=len(left), kprobe_events_left=sorted(kprobes_left))
    assert not left
    assert not kprobes_left
