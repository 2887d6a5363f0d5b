#!/usr/bin/env python3
"""The exporter's rendering alone, no kernel: a synthetic snapshot of N listeners through
tcptop_q.export.server.Exporter.publish() (which renders, as the sampling thread does), the
first publish (every listener rendered by prometheus_client) and then steady publishes of an
unchanged set (kept lines), per format, gzip or not; then a scrape (render(): picking bytes).
Prints ms."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcptop_q.export.server import Exporter  # noqa: E402
from tcptop_q.model import Listener, ListenerKey, NetnsCounters, Snapshot, Sources  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    ls = [Listener(key=ListenerKey(4026531840, "ipv4", "127.0.0.1", 1024 + i, 1000 + i), inode=i, pid=1234, comm="holder",
                   accept_queue=0, backlog=128, syn_queue=0, drops=0, drop_rate=0.0, overflows=0, queued=0,
                   synack_retrans=0, resets_sent=0, children={"ESTABLISHED": 0, "CLOSE_WAIT": 0})
          for i in range(args.listeners)]
    snap = Snapshot(time=1.0, interval=1.0, kernel="k", hostname="h", sources=Sources(True, True),
                    netns=[NetnsCounters(4026531840, {})], listeners=ls, close_wait=[])
    print(f"{args.listeners} listeners | format | gzip | first publish ms | steady publish median ms | max | scrape median ms")
    for accept in ("application/openmetrics-text;version=1.0.0", "text/plain"):
        for gz in (False, True):
            exp = Exporter(args.listeners)
            exp.render(accept, gz)  # a client asks for this format and encoding
            t = time.perf_counter()
            exp.publish(snap, 0.1)
            first = time.perf_counter() - t
            steady, scrape = [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                exp.publish(snap, 0.1)
                steady.append(time.perf_counter() - t)
                t = time.perf_counter()
                exp.render(accept, gz)
                scrape.append(time.perf_counter() - t)
            print(f"| {accept.split(';')[0]} | {gz} | {first * 1e3:.0f} | {statistics.median(steady) * 1e3:.0f} | "
                  f"{max(steady) * 1e3:.0f} | {statistics.median(scrape) * 1e3:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
