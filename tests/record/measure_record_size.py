"""Record size per minute at N listeners (docs/RECORD.md). Root; not collected by pytest.

    .venv/bin/python -m tests.record.measure_record_size 100 10000 [--seconds 60]

Builds N idle listeners in a lab netns next to the no-accept scenario (so there are
overflows, CLOSE_WAIT rows and changing counters), records with LiveSource (netlink + /proc,
no BPF) at 1 s for --seconds, and prints bytes, per-tick costs and replay costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def measure(count: int, seconds: float) -> dict:
    from tcptop_q.lab.scenarios import run_scenario
    from tcptop_q.record import Recorder, ReplaySource
    from tcptop_q.source import Filters, LiveSource

    with run_scenario("no-accept", seconds + 60) as (ns, info):
        ns.worker("listeners", ready=True, timeout=120, count=count, duration=seconds + 120)
        path = os.path.join(tempfile.mkdtemp(prefix="tcpq-size-"), f"{count}.tcpq.gz")
        source = LiveSource(interval=1.0, filters=Filters(netns=info["inode"]), use_bpf=False, blocking_owners=True)
        rec = Recorder(path, interval=1.0)
        write_ms = []
        ticks = 0
        try:
            source.sample(children=True)
            start = time.monotonic()
            next_at = start
            while time.monotonic() - start < seconds:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += 1.0
                snap = source.sample()
                t = time.perf_counter()
                rec.write(snap)
                write_ms.append((time.perf_counter() - t) * 1000)
                ticks += 1
            elapsed = time.monotonic() - start
        finally:
            source.close()
            rec.close()
    size = os.path.getsize(path)
    t = time.perf_counter()
    replay = ReplaySource(path)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    n = sum(1 for _ in replay)
    sample_ms = (time.perf_counter() - t) * 1000 / max(n, 1)
    os.unlink(path)
    return {
        "listeners": count, "ticks": ticks, "seconds": round(elapsed, 1), "bytes": size,
        "per_minute_MB": round(size / elapsed * 60 / 1e6, 3),
        "uncompressed_per_tick_kB": round(rec.bytes_in / max(ticks, 1) / 1e3, 1),
        "write_ms_median": round(statistics.median(write_ms), 1),
        "replay_open_s": round(open_s, 2), "replay_sample_ms": round(sample_ms, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("counts", type=int, nargs="+")
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    for count in args.counts:
        print(measure(count, args.seconds), flush=True)


if __name__ == "__main__":
    main()
