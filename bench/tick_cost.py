#!/usr/bin/env python3
"""Per-tick collector cost: CPU ms per tcptop_q.sampler.Sampler.sample() call (collect only, no UI,
no BPF) over a grid of scales, against `ss -tanm` / `ss -ltnm` over the same sockets.

For each grid point a ScaleFixture is built and this script re-runs itself with --inner inside
the netns (Sampler(all_netns=False): only that netns). Per repetition, interleaved:
  tick         sample(children=False): the every-second path (LISTEN+SYN_RECV+CLOSE_WAIT dump,
               TcpExt, owners already known)
  tick+rewalk  the same with one owner missing, so OwnerMap.resolve() re-walks /proc/*/fd, as it
               does at most every min_rescan (2 s) while inodes churn
  children     sample(children=True): + the full child dump (adaptive, every <= 30 s)
  ss -tanm, ss -ltnm  (children's rusage CPU, and wall)
Medians of --reps. Writes bench/results/tick_cost.json and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("TQBENCH_TREE") or str(ROOT))  # see scale_fixture.TREE
sys.path.insert(0, str(ROOT / "bench"))

GRID = [(1_000, 10_000), (1_000, 100_000), (10_000, 10_000), (10_000, 100_000)]


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def inner(reps: int) -> dict:
    from tcptop_q.sampler import Sampler

    def cmd(argv):
        c0, w0 = _cpu_children(), time.perf_counter()
        subprocess.run(argv, stdout=subprocess.PIPE, check=True)
        return (time.perf_counter() - w0) * 1e3, (_cpu_children() - c0) * 1e3

    s = Sampler(all_netns=False, blocking_owners=True, children_every=1e9)
    c0, w0 = time.process_time(), time.perf_counter()
    first = s.sample(0.0, children=True)
    cold = ((time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3)
    n_listeners = len(first.listeners)
    n_cw = len(first.close_wait)
    n_conns = sum(len(v) for v in (first.connections or {}).values())
    owned = sum(1 for lst in first.listeners if lst.pid is not None)

    def tick(children: bool, rewalk: bool = False):
        if rewalk:
            s.owners.by_inode.pop(first.listeners[0].inode, None)
            s.owners.last_walk = float("-inf")
        c, w = time.process_time(), time.perf_counter()
        s.sample(1.0, children=children)
        return (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3

    methods = {
        "tick": lambda: tick(False),
        "tick+rewalk": lambda: tick(False, True),
        "children": lambda: tick(True),
        "ss -tanm": lambda: cmd(["ss", "-tanm"]),
        "ss -ltnm": lambda: cmd(["ss", "-ltnm"]),
    }
    runs: dict[str, list] = {k: [] for k in methods}
    for _ in range(reps):
        for k, fn in methods.items():
            runs[k].append(fn())
    s.close()
    res = {k: {"wall_ms": statistics.median(r[0] for r in v), "cpu_ms": statistics.median(r[1] for r in v),
               "cpu_all": [round(r[1], 1) for r in v]} for k, v in runs.items()}
    res["first sample (cold: owner walk + children)"] = {"wall_ms": cold[0], "cpu_ms": cold[1]}
    res["_counts"] = {"listeners": n_listeners, "close_wait": n_cw, "children": n_conns, "listeners_owned": owned}
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--grid", default=",".join(f"{a}x{b}" for a, b in GRID), help="LISTENERSxSOCKETS,...")
    ap.add_argument("--queued-close-wait", type=int, default=0,
                    help="also leave this many CLOSE_WAIT children unaccepted (inode 0) in one accept queue")
    ap.add_argument("--out", default="tick_cost.json")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(args.reps)))
        return 0
    from scale_fixture import ScaleFixture, install_signal_cleanup, machine

    install_signal_cleanup()
    points = []
    for item in args.grid.split(","):
        lis, socks = (int(x) for x in item.split("x"))
        with ScaleFixture(lis, socks, queued_close_wait=args.queued_close_wait) as fx:
            res = fx.python(__file__, "--inner", "--reps", str(args.reps), timeout=3600)
        points.append({"listeners": lis, "sockets": socks, "queued_close_wait": args.queued_close_wait, **res})
        print(f"{lis}x{socks}: tick {res['tick']['cpu_ms']:.1f} ms CPU, ss -tanm {res['ss -tanm']['cpu_ms']:.1f}", flush=True)
    out = __import__("scale_fixture").results_dir()
    out.mkdir(exist_ok=True)
    (out / args.out).write_text(json.dumps({"machine": machine(), "reps": args.reps, "points": points}, indent=1) + "\n")
    print(table(points))
    return 0


def table(points: list[dict]) -> str:
    lines = [
        "| listeners | sockets | CW rows | tick CPU ms | tick / ss -tanm | tick+rewalk CPU ms | children tick CPU ms "
        "| children / ss -tanm | ss -tanm CPU ms | ss -ltnm CPU ms | cold first sample ms (wall) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        ss = p["ss -tanm"]["cpu_ms"]
        lines.append(
            f"| {p['listeners']} | {p['sockets']} | {p['_counts']['close_wait']} | {p['tick']['cpu_ms']:.1f} | "
            f"{p['tick']['cpu_ms'] / ss:.2f}x | {p['tick+rewalk']['cpu_ms']:.1f} | {p['children']['cpu_ms']:.1f} | "
            f"{p['children']['cpu_ms'] / ss:.2f}x | {ss:.1f} | {p['ss -ltnm']['cpu_ms']:.1f} | "
            f"{p['first sample (cold: owner walk + children)']['wall_ms']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
