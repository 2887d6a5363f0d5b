#!/usr/bin/env python3
"""First frame of the TUI: process start to the first listener row painted, in tmux, against
`ss -ltn` (process start to its output). Medians of --reps; run as root (BPF loads in the
background and must not delay the first frame). Prints markdown."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def first_frame(extra: list[str], marker: str, timeout: float = 30.0) -> float:
    session = f"tqff{time.monotonic_ns() % 10**9}"
    cmd = f"cd {ROOT} && exec {sys.executable} -m tcptop_q {' '.join(extra)}"
    start = time.monotonic()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "48", cmd], check=True)
    try:
        while time.monotonic() - start < timeout:
            if marker in tmux("capture-pane", "-t", session, "-p"):
                return time.monotonic() - start
            time.sleep(0.01)
        raise RuntimeError("no frame")
    finally:
        tmux("send-keys", "-t", session, "q")
        time.sleep(0.5)
        tmux("kill-session", "-t", session)


def ss_once() -> float:
    start = time.monotonic()
    subprocess.run(["ss", "-ltn"], capture_output=True, check=True)
    return time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    # A listener every machine here has: the row of any LISTEN socket marks the table painted.
    marker_line = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout.split()
    marker = marker_line[3].rsplit(":", 1)[1] if marker_line else "LISTEN"
    rows = {"ss -ltn": [], "tcpq-top (BPF loading in the background)": [], "tcpq-top --no-bpf": []}
    for _ in range(args.reps):
        rows["ss -ltn"].append(ss_once())
        rows["tcpq-top (BPF loading in the background)"].append(first_frame([], f":{marker}"))
        rows["tcpq-top --no-bpf"].append(first_frame(["--no-bpf"], f":{marker}"))
    base = statistics.median(rows["ss -ltn"])
    print(f"| what | first frame, median of {args.reps} | / ss -ltn |")
    print("|---|---:|---:|")
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"| {name} | {med * 1000:.0f} ms | {med / base:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
