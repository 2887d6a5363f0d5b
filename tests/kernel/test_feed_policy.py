"""Under a transition storm the feed narrows itself (counts stay exact); the port the user
is looking at keeps flowing."""

from __future__ import annotations

import subprocess
import sys
import time


def storm(labns, port: int, count: int) -> subprocess.Popen:
    return labns.spawn([sys.executable, "-m", "tcptop_q.lab.worker", "clients", "--addr", "127.0.0.1",
                        "--port", str(port), "--count", str(count), "--payload", "x", "--gap", "0.002",
                        "--connect-timeout", "2"], stdout=subprocess.PIPE, text=True)


def test_feed_pauses_under_a_storm_and_counts_stay_exact(labns, bpf):  # noqa: F811
    from tcptop_q.source import Filters, LiveSource

    labns.serve(addr="127.0.0.1", port=8096, backlog=512, mode="echo-close")
    src = LiveSource(interval=0.5, filters=Filters(netns=labns.inode))
    src.FEED_MAX_RATE = 100.0  # a storm any CI box can exceed (the default is 20k/s)
    try:
        src.start_bpf()
        assert src.wait_bpf(90), src.bpf_error
        src.sample()
        clients = storm(labns, 8096, 900)
        paused = []
        deadline = time.monotonic() + 30
        while clients.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            snap = src.sample()
            paused.append((any("feed paused" in n for n in snap.sources.notes), len(snap.events)))
        connected = int(clients.stdout.read().split()[-1])
        assert connected == 900
        assert any(p for p, _ in paused), paused
        first = next(i for i, (p, _) in enumerate(paused) if p)
        # once paused, the kernel sends nothing more (the tick after it may drain a tail)
        assert len(paused) >= first + 3, paused
        assert all(n == 0 for _, n in paused[first + 2:]), paused
        def queued_after(want: int) -> tuple[int | None, list]:
            """Sample until the listener's queued count reaches `want` (deadline 10 s)."""
            events: list = []
            deadline = time.monotonic() + 10
            while True:
                snap = src.sample()
                events += snap.events
                got = next(x for x in snap.listeners if x.lport == 8096).queued
                if got == want or time.monotonic() > deadline:
                    return got, events
                time.sleep(0.1)  # pacing the samples

        assert queued_after(900)[0] == 900  # every child queued was counted with the feed off

        # the user opens the listener: its port flows again, nothing else does. The request is
        # applied on the sampling thread, at the next sample (as the app's collector does).
        src.focus_port(8096)
        src.sample()
        labns.clients(addr="127.0.0.1", port=8096, count=5, payload="", gap=0.01)
        labns.clients(addr="127.0.0.1", port=8097, count=2, payload="", connect_timeout=0.2)  # refused: RST
        queued, events = queued_after(905)
        assert events, "the focused port's transitions come through"
        assert all(8096 in (ev.lport, ev.rport) for ev in events)
        assert queued == 905
    finally:
        src.close()
