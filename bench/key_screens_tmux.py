#!/usr/bin/env python3
"""Enter and Escape as a user sees them: the real TUI in tmux (160x48, BPF as it comes up),
over N real listeners in a private netns (bench/scale_fixture.py), N = 100 (baseline) and
10000 in the same run. Root only.

    .venv/bin/python bench/key_screens_tmux.py [--listeners 10000] [--reps 7]

Each rep: Enter, poll the pane (tmux capture-pane, every 5 ms) until the listener screen is
drawn (its footer, the owner pid, the children line); wait for a tick to arrive while drilled
in (the header changes); Escape, poll until the main table is back (status line and header).
Wall time from send-keys to the pane showing it: the terminal's own view, polling and the
machine's neighbours included (bench/key_screens.py gives the app's CPU time, per key); "ui
cpu": CPU of the app's main (UI) thread over the same span, a tick applied meanwhile included;
"per s, no key": what the ticks alone cost the UI thread and the process, 3 x 3 s before the keys.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from scale_fixture import ScaleFixture, install_signal_cleanup  # noqa: E402


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def pane(session: str) -> str:
    return tmux("capture-pane", "-t", session, "-p")


def until(session: str, pred, timeout: float = 30.0) -> tuple[float, str]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        text = pane(session)
        if pred(text):
            return time.monotonic() - start, text
        time.sleep(0.005)
    raise RuntimeError(f"screen did not come; last pane:\n{pane(session)}")


def cpu(pid: int, tid: int | None = None) -> float:
    """utime+stime in seconds of a process, or of one of its threads (the UI's: the main one)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(n: int, reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"enter": [], "escape": [], "enter ui cpu": [], "escape ui cpu": [],
                                   "ui cpu per s, no key": [], "process cpu per s, no key": []}
    with ScaleFixture(n, 0) as fx:
        session = f"tqkeys{os.getpid()}_{n}"
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "48",
                        f"cd {ROOT} && exec {sys.executable} -m tcptop_q --netns {fx.inode}"], check=True)
        table = f"{n}/{n} listeners"
        pid = int(tmux("list-panes", "-t", session, "-F", "#{pane_pid}").split()[0])

        def main_shown(s: str) -> bool:
            return table in s and "LISTEN" in s and "esc Back" not in s

        try:
            until(session, lambda s: main_shown(s) and ("BPF: live" in s or "BPF: off" in s), 120)
            for _ in range(3):  # what the ticks alone cost the UI thread (keys wait behind it)
                c0, p0, t0 = cpu(pid, pid), cpu(pid), time.monotonic()
                time.sleep(3.0)
                dt = time.monotonic() - t0
                out["ui cpu per s, no key"].append((cpu(pid, pid) - c0) / dt)
                out["process cpu per s, no key"].append((cpu(pid) - p0) / dt)
            for _ in range(reps):
                c0, t0 = cpu(pid, pid), time.monotonic()
                tmux("send-keys", "-t", session, "Enter")
                _, text = until(session, lambda s: "esc Back" in s and " pid " in s and "children" in s)
                out["enter"].append(time.monotonic() - t0)
                out["enter ui cpu"].append(cpu(pid, pid) - c0)
                top = text.splitlines()[0]
                until(session, lambda s, top=top: s.splitlines()[0] != top, 10)  # a tick came meanwhile
                c0, t0 = cpu(pid, pid), time.monotonic()
                tmux("send-keys", "-t", session, "Escape")
                until(session, main_shown)
                out["escape"].append(time.monotonic() - t0)
                out["escape ui cpu"].append(cpu(pid, pid) - c0)
        finally:
            tmux("send-keys", "-t", session, "q")
            deadline = time.monotonic() + 15
            while subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0:
                if time.monotonic() > deadline:
                    tmux("kill-session", "-t", session)
                    break
                time.sleep(0.1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listeners", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    install_signal_cleanup()
    base = run(100, args.reps)
    res = run(args.listeners, args.reps)
    print(f"ms, median of {args.reps} (max); wall: send-keys to the pane showing it; ui cpu: the"
          f" app's main (UI) thread meanwhile, 1/{os.sysconf('SC_CLK_TCK')} s ticks; load {os.getloadavg()[0]:.1f}")
    for key in res:
        b, r = statistics.median(base[key]) * 1000, statistics.median(res[key]) * 1000
        print(f"{key:<13} 100: {b:6.0f} ({max(base[key]) * 1000:5.0f})   {args.listeners}: {r:6.0f}"
              f" ({max(res[key]) * 1000:5.0f})   {r / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
