#!/usr/bin/env python3
"""Owner map upkeep: the periodic check (verify every holder of a shown socket, read new
processes' fds) against a full /proc/*/fd walk, over the same fixture.

    sudo .venv/bin/python bench/owner_check.py [--points 1000x10000,10000x100000] [--runs 7]

"shown" = every LISTEN and CLOSE_WAIT socket of the fixture netns (what the sampler passes to
OwnerMap.resolve). CPU ms per call (process time), medians over --runs; the walk is the baseline.
Writes bench/results/owner_check.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_fixture import ScaleFixture, install_signal_cleanup, machine, results_dir  # noqa: E402


def inner(runs: int) -> dict:
    from tcptop_q.probes import diag
    from tcptop_q.probes.owners import OwnerMap

    with diag.DiagSocket() as d:
        rows = d.dump_both(diag.state_mask(diag.TCP_LISTEN, diag.TCP_CLOSE_WAIT))
    wanted = frozenset(r.inode for r in rows if r.inode)
    om = OwnerMap()
    om._wanted = wanted

    def cpu(fn) -> float:
        c = time.process_time()
        fn()
        return (time.process_time() - c) * 1e3

    cpu(om.walk)  # warm-up
    walks = [cpu(om.walk) for _ in range(runs)]
    checks = [cpu(om.check) for _ in range(runs)]
    holders = sum(len(h) for h in om.holders.values())
    return {
        "shown_sockets": len(wanted),
        "holders_verified": holders,
        "socket_inodes_seen": len(om.by_inode),
        "walk_cpu_ms": statistics.median(walks),
        "check_cpu_ms": statistics.median(checks),
        "check_vs_walk": statistics.median(checks) / statistics.median(walks),
        "period_s": om.period,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="1000x10000,10000x100000")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(args.runs)))
        return 0
    install_signal_cleanup()
    out = {"machine": machine(), "points": []}
    for point in args.points.split(","):
        listeners, sockets = (int(x) for x in point.split("x"))
        with ScaleFixture(listeners=listeners, sockets=sockets) as fx:
            res = fx.python(__file__, "--inner", "--runs", str(args.runs))
        res.update(listeners=listeners, sockets=sockets)
        out["points"].append(res)
        print(json.dumps(res), flush=True)
    (results_dir() / "owner_check.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
