#!/usr/bin/env python3
"""Memory of `tcpq-top --batch` with and without BPF, at a small scale and at 10k listeners /
100k sockets (ScaleFixture), against `ss -tanm` over the same sockets as the baseline.

tcpq-top runs on the host with `--netns <fixture>` for --ticks ticks of --delay s; /proc/PID/status
is polled every 50 ms: steady VmRSS (the last reading before exit) and VmHWM (peak, which
includes bcc's in-process clang compile when BPF is on). ss peak RSS from wait4's ru_maxrss.
Medians of --reps. Writes bench/results/rss.json and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from scale_fixture import tcpq_argv  # noqa: E402  (also puts the tree under test on sys.path)

TCPQ = tcpq_argv()


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def run_tcpq(argv: list[str], timeout: float) -> tuple[float, float]:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None and time.monotonic() < deadline:
            st = status_kb(p.pid)
            if "VmRSS" in st:
                last = st
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.terminate()  # our own child, by pid
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return last.get("VmRSS", 0) / 1024, last.get("VmHWM", 0) / 1024


def run_ss(argv: list[str]) -> float:
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _pid, _status, ru = os.wait4(p.pid, 0)
    p.returncode = 0
    return ru.ru_maxrss / 1024


def measure(listeners: int, sockets: int, reps: int, ticks: int, delay: float) -> dict:
    from scale_fixture import ScaleFixture

    with ScaleFixture(listeners, sockets) as fx:
        base = ["--batch", "-n", str(ticks), "-d", str(delay), "--netns", str(fx.inode)]
        cfg = {
            "tcpq-top --batch --no-bpf": lambda: run_tcpq([*TCPQ, *base, "--no-bpf"], 600),
            "tcpq-top --batch (BPF)": lambda: run_tcpq([*TCPQ, *base], 600),
            "ss -tanm (baseline)": lambda: (run_ss(fx.argv(["ss", "-tanm"])), 0.0),
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in cfg}
        for _ in range(reps):
            for k, fn in cfg.items():
                runs[k].append(fn())
    return {k: {"rss_mb": statistics.median(r[0] for r in v), "hwm_mb": statistics.median(r[1] for r in v)}
            for k, v in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ticks", type=int, default=8)
    ap.add_argument("--delay", type=float, default=0.5)
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--sockets", type=int, default=100_000)
    args = ap.parse_args()
    from scale_fixture import install_signal_cleanup, machine

    install_signal_cleanup()
    out = {}
    for label, (lis, socks) in {"10 listeners": (10, 0),
                                f"{args.listeners} listeners, {args.sockets} sockets": (args.listeners, args.sockets)}.items():
        out[label] = measure(lis, socks, args.reps, args.ticks, args.delay)
        print(label)
        print("| process | steady RSS MB | peak (VmHWM) MB | steady / ss peak |\n|---|---:|---:|---:|")
        ss = out[label]["ss -tanm (baseline)"]["rss_mb"]
        for k, v in out[label].items():
            print(f"| {k} | {v['rss_mb']:.0f} | {v['hwm_mb']:.0f} | {v['rss_mb'] / ss:.1f}x |", flush=True)
    res = __import__("scale_fixture").results_dir()
    res.mkdir(exist_ok=True)
    (res / "rss.json").write_text(json.dumps({"machine": machine(), "reps": args.reps, "ticks": args.ticks,
                                              "scales": out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
