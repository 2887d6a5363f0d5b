#!/usr/bin/env python3
"""Where accept tracking's cost goes (probes/accept.bpf.c), measured in ways a loaded, shared
machine disturbs little: (1) kernel.bpf_stats_enabled run time per program (ns per run) with
accept tracking on and off, during a bounded connection storm (bench/storm.c) in a private
netns; (2) CPU time per syscall of a getppid() loop with the probes loaded, on vs off: enabling
any syscall tracepoint sends every syscall of every process through the tracing slow path.
Configurations alternate, medians of --reps. Root only; the sysctl is restored.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _bpfbench import LOOP_C, bpftool_progs, prog_deltas  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cycles", type=int, default=50_000)
    args = ap.parse_args()
    from tcptop_q.lab.netns import LabNetns
    from tcptop_q.probes.bpf import BpfProbes

    tmp = tempfile.mkdtemp(prefix="tqbench-accept-")
    storm, loop = os.path.join(tmp, "storm"), os.path.join(tmp, "loop")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", storm, str(ROOT / "bench" / "storm.c")], check=True)
    Path(loop + ".c").write_text(LOOP_C)
    subprocess.run(["gcc", "-O2", "-o", loop, loop + ".c"], check=True)
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    per_run: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    syscall_ns: dict[str, list[float]] = {"on": [], "off": [], "none": []}
    try:
        stats.write_text("1")
        with LabNetns("acccost") as ns:
            for rep in range(args.reps):
                for mode in (("on", "off") if rep % 2 == 0 else ("off", "on")):
                    p = BpfProbes(netns=ns.inode, accept_hook=None if mode == "on" else "off")
                    p.start()
                    if not p.wait_ready(180):
                        raise SystemExit(f"probes not live: {p.error}")
                    p.set_feed("off")
                    ids = set(p.prog_ids())
                    try:
                        before = bpftool_progs()
                        ns.run([storm, str(args.cycles), "10", "9100"], timeout=60)
                        for name, (runs, t) in prog_deltas(before, bpftool_progs(), ids).items():
                            per_run[mode].setdefault(name, []).append(t / runs)
                        syscall_ns[mode].append(float(subprocess.run([loop, "3000000"], capture_output=True,
                                                                     text=True, check=True).stdout))
                    finally:
                        p.close()
                syscall_ns["none"].append(float(subprocess.run([loop, "3000000"], capture_output=True, text=True,
                                                               check=True).stdout))
                print(f"rep {rep}: getppid ns on {syscall_ns['on'][-1]} off {syscall_ns['off'][-1]} "
                      f"none {syscall_ns['none'][-1]}", flush=True)
    finally:
        stats.write_text(old)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    print("| program | ns per run, accept tracking on | off |")
    print("|---|---:|---:|")
    for name in sorted(set(per_run["on"]) | set(per_run["off"])):
        on = per_run["on"].get(name)
        off = per_run["off"].get(name)
        print(f"| {name} | {statistics.median(on):.0f} | " if on else f"| {name} | - | ", end="")
        print(f"{statistics.median(off):.0f} |" if off else "- |")
    for k, v in syscall_ns.items():
        print(f"getppid() CPU ns per call, probes {k}: median {statistics.median(v):.1f} (runs {v})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
