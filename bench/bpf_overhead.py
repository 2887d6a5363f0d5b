#!/usr/bin/env python3
"""What the probes cost a connection storm: loopback connect/accept/close cycles per second
with nothing attached, with the probes and the feed on, with the feed limited to another port,
and with the feed off. A reader thread calls read() once a second, as the sampler does.

Runs the C storm (bench/bpf_storm.c, built with cc) in a private netns; configurations are
interleaved, median of --reps runs of --seconds each. Root only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tcptop_q.probes.bpf import BpfProbes  # noqa: E402


def storm(ns: str, exe: str, seconds: float) -> float:
    out = subprocess.run(["ip", "netns", "exec", ns, exe, str(seconds), "9100"], capture_output=True, text=True,
                         check=True, timeout=seconds + 30)
    return float(out.stdout.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tqbpf-bench-")
    exe = os.path.join(tmp, "bpf_storm")
    subprocess.run(["cc", "-O2", "-pthread", "-o", exe, str(ROOT / "bench" / "bpf_storm.c")], check=True)
    ns = f"tqbpf-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    results: dict[str, list[float]] = {}
    extra: dict[str, str] = {}
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        configs = ["none", "feed all", "feed other port", "feed off"]
        for _rep in range(args.reps):
            for cfg in configs:
                if cfg == "none":
                    results.setdefault(cfg, []).append(storm(ns, exe, args.seconds))
                    continue
                p = BpfProbes()
                p.start()
                if not p.wait_ready(60):
                    print(f"probes did not go live: {p.error}", file=sys.stderr)
                    return 1
                if cfg == "feed off":
                    p.set_feed("off")
                elif cfg == "feed other port":
                    p.set_feed("port", 1)
                stop = threading.Event()
                reads: list[float] = []
                events = [0]

                def reader(p=p, stop=stop, reads=reads, events=events) -> None:
                    while not stop.wait(1.0):
                        t = time.monotonic()
                        r = p.read()
                        reads.append(time.monotonic() - t)
                        events[0] += len(r.events)

                th = threading.Thread(target=reader)
                th.start()
                try:
                    results.setdefault(cfg, []).append(storm(ns, exe, args.seconds))
                finally:
                    stop.set()
                    th.join()
                    lost = p.read().lost_events
                    p.close()
                extra[cfg] = (f"read() median {statistics.median(reads) * 1000:.1f} ms, "
                              f"{events[0] / args.seconds:.0f} feed events/s delivered, {lost / args.seconds:.0f}/s lost")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    base = statistics.median(results["none"])
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs; median of {args.reps} x {args.seconds:g} s")
    for cfg, vals in results.items():
        med = statistics.median(vals)
        note = f"  ({extra[cfg]})" if cfg in extra else ""
        print(f"{cfg:>16}: {med:8.0f} cycles/s  {med / base:5.2f}x{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
