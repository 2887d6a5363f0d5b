#!/usr/bin/env python3
"""Run every scale/overhead benchmark of docs/BENCHMARKS.md in sequence (root; ~15 minutes).

Each script builds its own private netns (bench/scale_fixture.py), tears it down on every exit
path, writes bench/results/<name>.json and prints its markdown table. Run them one at a time:
on a 2-core machine two benchmarks at once measure each other.

    .venv/bin/python bench/run_all.py            # everything
    .venv/bin/python bench/run_all.py --quick    # small scales, 3 reps: a smoke test (~2 min)
    .venv/bin/python bench/run_all.py --only tick_cost storm_overhead

Benchmark-only dependencies (not in pyproject): `.venv/bin/pip install pyroute2 py-spy`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable

FULL: dict[str, list[str]] = {
    "diag_parse": ["diag_parse.py"],
    "tick_cost": ["tick_cost.py"],
    "tick_cost_queued": ["tick_cost.py", "--grid", "1000x100000,10000x100000", "--queued-close-wait", "2000",
                         "--reps", "5", "--out", "tick_cost_queued.json"],
    "profile_tick": ["profile_tick.py"],
    "first_output": ["first_output.py"],
    "storm_overhead": ["storm_overhead.py", "--reps", "5", "--count", "300000", "--max-seconds", "20"],
    "rss": ["rss.py"],
}
QUICK: dict[str, list[str]] = {
    "diag_parse": ["diag_parse.py", "--listeners", "1000", "--sockets", "10000", "--reps", "3"],
    "tick_cost": ["tick_cost.py", "--grid", "1000x10000", "--reps", "3", "--out", "tick_cost_quick.json"],
    "profile_tick": ["profile_tick.py", "--listeners", "1000", "--sockets", "10000", "--ticks", "10"],
    "first_output": ["first_output.py", "--listeners", "1000", "--sockets", "10000", "--reps", "3", "--no-bpf-run"],
    "storm_overhead": ["storm_overhead.py", "--reps", "3", "--count", "20000"],
    "rss": ["rss.py", "--listeners", "1000", "--sockets", "10000", "--reps", "3", "--ticks", "3"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--head", action="store_true",
                    help="benchmark `git archive HEAD` (exported to /tmp) instead of the working tree, so that "
                         "edits in progress elsewhere cannot change the code half-way through")
    args = ap.parse_args()
    if args.head:
        import os

        sys.path.insert(0, str(HERE))
        from scale_fixture import export_head

        os.environ["TQBENCH_TREE"] = export_head()
        print(f"tree under test: {os.environ['TQBENCH_TREE']}", flush=True)
    plan = QUICK if args.quick else FULL
    if args.quick:
        import os
        import tempfile

        os.environ["TQBENCH_RESULTS"] = tempfile.mkdtemp(prefix="tqbench-quick-")
        print(f"smoke results in {os.environ['TQBENCH_RESULTS']}", flush=True)
    failed = []
    for name, argv in plan.items():
        if args.only and name not in args.only:
            continue
        print(f"\n## {name}\n", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([PY, str(HERE / argv[0]), *argv[1:]]).returncode
        print(f"\n({name}: exit {rc}, {time.monotonic() - t0:.0f} s)", flush=True)
        if rc:
            failed.append(name)
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = [ln for ln in leftovers.splitlines() if ln.startswith("tq-bench-")]
    if mine:
        print(f"WARNING: netns left behind: {mine}", file=sys.stderr)
        failed.append("cleanup")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
