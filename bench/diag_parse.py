#!/usr/bin/env python3
"""sock_diag dump + parse cost at scale: tcptop_q's DiagSocket vs pyroute2 vs ss (baseline),
and the inode -> pid map (OwnerMap.walk) vs psutil.net_connections.

Builds a ScaleFixture (default 10k listeners, 100k established/CLOSE_WAIT sockets), then runs
itself with --inner inside that netns (a diag socket answers for the netns it was created in).
Methods are interleaved within each repetition; figures are medians of --reps runs, wall ms
(perf_counter) with CPU ms (process_time, or children's rusage for ss) alongside.
Writes bench/results/diag_parse.json and prints a markdown table.

pyroute2 is a benchmark-only dependency: `.venv/bin/pip install pyroute2` (not in pyproject).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("TQBENCH_TREE") or str(ROOT))  # see scale_fixture.TREE
sys.path.insert(0, str(ROOT / "bench"))


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    rows = fn()
    return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3, rows


def timed_cmd(argv: list[str]):
    c0, w0 = _children_cpu(), time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=True).stdout
    wall = (time.perf_counter() - w0) * 1e3
    # ss -m prints skmem on a continuation line (leading tab): count socket lines only.
    rows = sum(1 for line in out.split(b"\n") if line and not line[:1].isspace()) - 1
    return wall, (_children_cpu() - c0) * 1e3, rows


def inner(reps: int, skip_pyroute2: bool, skip_owners: bool) -> dict:
    from tcptop_q.probes import diag
    from tcptop_q.probes.owners import OwnerMap

    ds = diag.DiagSocket()
    methods: dict[str, object] = {
        "tick: tcptop_q DiagSocket dump_both(TICK_STATES, meminfo)": lambda: timed(
            lambda: len(ds.dump_both(diag.TICK_STATES, meminfo=True))),
        "tick: ss -ltnm (LISTEN only)": lambda: timed_cmd(["ss", "-ltnm"]),
        "tick: ss -tnm, same states": lambda: timed_cmd(
            ["ss", "-tnm", "state", "listening", "state", "syn-recv", "state", "close-wait"]),
        "children: tcptop_q DiagSocket dump_both(CHILD_STATES)": lambda: timed(
            lambda: len(ds.dump_both(diag.CHILD_STATES))),
        "children: ss -tanm (all states)": lambda: timed_cmd(["ss", "-tanm"]),
    }
    if not skip_pyroute2:
        from pyroute2 import DiagSocket as PrDiag

        pr = PrDiag()
        pr.bind()

        def pr_dump(states: int, ext: int) -> int:
            n = 0
            for fam in (socket.AF_INET, socket.AF_INET6):
                n += len(list(pr.get_sock_stats(family=fam, states=states, extensions=ext)))
            return n

        methods["tick: pyroute2 get_sock_stats (same states, skmeminfo)"] = lambda: timed(
            lambda: pr_dump(diag.TICK_STATES, 1 << (diag.INET_DIAG_SKMEMINFO - 1)))
        methods["children: pyroute2 get_sock_stats (CHILD_STATES)"] = lambda: timed(
            lambda: pr_dump(diag.CHILD_STATES, 0))
    if not skip_owners:
        import psutil

        def walk() -> int:
            om = OwnerMap()
            om.walk()
            return len(om.by_inode)

        methods["owners: tcptop_q OwnerMap().walk()"] = lambda: timed(walk)
        methods["owners: psutil.net_connections('tcp')"] = lambda: timed(lambda: len(psutil.net_connections("tcp")))

    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in methods}
    for fn in methods.values():  # warm-up: imports, caches, page faults
        fn()
    for _ in range(reps):
        for name, fn in methods.items():
            runs[name].append(fn())
    ds.close()
    out = {}
    for name, rs in runs.items():
        out[name] = {
            "wall_ms": statistics.median(r[0] for r in rs),
            "cpu_ms": statistics.median(r[1] for r in rs),
            "rows": statistics.median(r[2] for r in rs),
            "wall_all": [round(r[0], 1) for r in rs],
        }
    return out


def table(res: dict) -> str:
    def base_of(name: str) -> str | None:
        if name.startswith("tick:"):
            return "tick: ss -ltnm (LISTEN only)"
        if name.startswith("children:"):
            return "children: ss -tanm (all states)"
        if name.startswith("owners:"):
            return "owners: psutil.net_connections('tcp')"
        return None

    lines = ["| what | rows | wall ms (median) | CPU ms | wall / baseline |", "|---|---:|---:|---:|---:|"]
    for name, r in res.items():
        base = res.get(base_of(name) or "")
        ratio = f"{r['wall_ms'] / base['wall_ms']:.2f}x" if base else "-"
        lines.append(f"| {name} | {r['rows']:.0f} | {r['wall_ms']:.1f} | {r['cpu_ms']:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--sockets", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-pyroute2", action="store_true")
    ap.add_argument("--skip-owners", action="store_true")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    flags = (["--skip-pyroute2"] if args.skip_pyroute2 else []) + (["--skip-owners"] if args.skip_owners else [])
    if args.inner:
        print(json.dumps(inner(args.reps, args.skip_pyroute2, args.skip_owners)))
        return 0
    from scale_fixture import ScaleFixture, install_signal_cleanup, machine

    install_signal_cleanup()
    with ScaleFixture(args.listeners, args.sockets) as fx:
        counts = dict(fx.state_counts())
        res = fx.python(__file__, "--inner", "--reps", str(args.reps), *flags, timeout=3600)
    doc = {"machine": machine(), "listeners": args.listeners, "sockets": args.sockets, "reps": args.reps,
           "ss_counts": counts, "results": res}
    out = __import__("scale_fixture").results_dir()
    out.mkdir(exist_ok=True)
    (out / "diag_parse.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{args.listeners} listeners, {args.sockets} sockets; kernel counts {counts}")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
