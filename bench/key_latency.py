#!/usr/bin/env python3
"""Key-to-screen latency of the TUI, quiet and under a connection storm (issue 7: "keys still
answer"). tcpq-top runs in tmux on the host (all netns, BPF live, feed on); a key that opens the
help screen is sent and the pane polled until the help shows, then Esc until it is gone.
The storm is bench/storm.c in a private netns (fixed count, bounded time). Root only.
Prints medians (ms) quiet vs storm, and the ratio."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tcptop_q.lab.netns import LabNetns  # noqa: E402


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def until(session: str, pred, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred(tmux("capture-pane", "-t", session, "-p")):
            return time.monotonic() - start
        time.sleep(0.005)
    raise RuntimeError("screen did not change")


def press_cycle(session: str) -> float:
    t0 = time.monotonic()
    tmux("send-keys", "-t", session, "?")
    until(session, lambda s: "tcpq-top keys" in s)
    latency = time.monotonic() - t0
    tmux("send-keys", "-t", session, "Escape")
    until(session, lambda s: "tcpq-top keys" not in s)
    return latency


def main() -> int:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    session = f"tqkey{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp, LabNetns("keylat") as ns:
        exe = os.path.join(tmp, "storm")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", exe, str(ROOT / "bench" / "storm.c")], check=True)
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "48",
                        f"cd {ROOT} && exec {sys.executable} -m tcptop_q"], check=True)
        try:
            until(session, lambda s: "BPF: live" in s, 60)
            quiet = [press_cycle(session) for _ in range(reps)]
            storm = ns.spawn([exe, "3000000", "60", "9300"], stdout=subprocess.DEVNULL)
            time.sleep(2.0)
            loaded = [press_cycle(session) for _ in range(reps)]
            feed_note = "feed paused" in tmux("capture-pane", "-t", session, "-p")
            storm.terminate()
            storm.wait()
        finally:
            tmux("send-keys", "-t", session, "q")
            time.sleep(1)
            tmux("kill-session", "-t", session)
    q, s = statistics.median(quiet), statistics.median(loaded)
    print(f"| condition | key to screen, median of {reps} |")
    print("|---|---:|")
    print(f"| quiet | {q * 1000:.0f} ms |")
    print(f"| storm (bench/storm.c, BPF live) | {s * 1000:.0f} ms ({s / q:.1f}x) |")
    print(f"feed paused note on screen during the storm: {feed_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
