#!/usr/bin/env python3
"""What raw tracepoints save (probes/plan.py RAW_TRACEPOINTS): for the default hooks
(`auto`: raw tracepoints where the kernel has them) and `--tracepoints classic`, during a bounded
connection storm (bench/storm.c) in a private netns with the probes filtered to it and the feed
off, as `--batch` runs them:
  - ns per program run and runs per storm cycle (kernel.bpf_stats_enabled, restored after);
    this is the program alone: a classic tracepoint also builds its trace-event record first,
    which no program statistic counts;
  - the storm's cycles per CPU-second (its own CPU: softirqs and BPF included), which does.
Modes alternate, medians of --reps. Root only. Writes bench/results/hook_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _bpfbench import bpftool_progs, prog_deltas  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=50_000)
    ap.add_argument("--modes", nargs="+", default=["auto", "classic"], choices=["auto", "classic"],
                    help="hook kinds to measure (each against no probes)")
    ap.add_argument("--children", action="store_true",
                    help="child state counts on, as the TUI runs them (feed still off: the TUI's paused feed)")
    ap.add_argument("--out", default="hook_cost.json", help="file name under bench/results")
    args = ap.parse_args()
    from tcptop_q.lab.netns import LabNetns
    from tcptop_q.probes.bpf import BpfProbes

    tmp = tempfile.mkdtemp(prefix="tqbench-hooks-")
    storm = os.path.join(tmp, "storm")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", storm, str(ROOT / "bench" / "storm.c")], check=True)
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    modes = (*args.modes, "none")
    per_run: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    per_cycle: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    cps_cpu: dict[str, list[float]] = {m: [] for m in modes}
    total_ns: dict[str, list[float]] = {m: [] for m in modes}
    hooks: dict[str, dict[str, str]] = {}
    load = [os.getloadavg()[0]]
    try:
        stats.write_text("1")
        with LabNetns("hookcost") as ns:
            ns.run([storm, "2000", "5", "9100"], timeout=60)  # warm-up
            for rep in range(args.reps):
                order = modes if rep % 2 == 0 else tuple(reversed(modes))
                for mode in order:
                    p = None
                    if mode != "none":
                        p = BpfProbes(netns=ns.inode, tracepoints=None if mode == "auto" else mode)
                        p.start()
                        if not p.wait_ready(180):
                            raise SystemExit(f"probes not live: {p.error}")
                        p.set_feed("off")
                        p.set_children(args.children)
                        hooks[mode] = dict(p.hooks)
                    ids = set(p.prog_ids()) if p else set()
                    try:
                        before = bpftool_progs()
                        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        out = ns.run([storm, str(args.cycles), "20", "9100"], timeout=90).stdout.split()
                        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        after = bpftool_progs()
                    finally:
                        if p:
                            p.close()
                    cycles = float(out[0])
                    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
                    cps_cpu[mode].append(cycles / cpu)
                    spent = 0.0
                    for prog, (runs, t) in prog_deltas(before, after, ids).items():
                        per_run[mode].setdefault(prog, []).append(t / runs)
                        per_cycle[mode].setdefault(prog, []).append(runs / cycles)
                        spent += t
                    total_ns[mode].append(spent / cycles)
                    print(f"rep {rep} {mode}: {cycles / cpu:.0f} cycles per CPU-s, program ns per cycle "
                          f"{spent / cycles:.0f}", flush=True)
                load.append(os.getloadavg()[0])
    finally:
        stats.write_text(old)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    med = statistics.median
    print("| program | ns per run | runs per cycle |")
    print("|---|---:|---:|")
    for mode in args.modes:
        for name in sorted(per_run[mode]):
            print(f"| {mode}: {name} | {med(per_run[mode][name]):.0f} | {med(per_cycle[mode][name]):.2f} |")
    base = med(cps_cpu["none"])
    for mode in modes:
        ratio = [a / b for a, b in zip(cps_cpu[mode], cps_cpu["none"], strict=False)]
        print(f"{mode}: cycles per CPU-s median {med(cps_cpu[mode]):.0f} ({med(cps_cpu[mode]) / base:.3f}x of none; "
              f"per-rep ratio median {med(ratio):.3f}), program ns per cycle {med(total_ns[mode]):.0f}")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"commit {commit}; load average {load}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / args.out).write_text(json.dumps({
        "commit": commit, "children": args.children, "loadavg": load, "cycles": args.cycles, "reps": args.reps, "hooks": hooks,
        "ns_per_run": per_run, "runs_per_cycle": per_cycle, "cycles_per_cpu_s": cps_cpu,
        "program_ns_per_cycle": total_ns}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
