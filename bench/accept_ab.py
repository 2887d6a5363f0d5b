#!/usr/bin/env python3
"""A/B of the accept tracking program text (probes/accept.bpf.c) in one run: ns per program
run (kernel.bpf_stats_enabled, restored after) of the accept exit, data_ready and set_state
programs during a bounded connection storm (bench/storm.c) in a private netns, with this
tree's accept.bpf.c and with another file given by --baseline (e.g. main's, from
`git show main:tcptop_q/probes/accept.bpf.c`), everything else this tree's. Alternated each
repetition, medians of --reps; feed off, probes filtered to the storm's netns. Root only.
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
from _bpfbench import bpftool_progs, prog_deltas  # noqa: E402

PROGRAMS = ("tq_accept_exit", "tq_data_ready", "tq_r_data_ready", "tq_set_state", "tq_r_set_state")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="the accept.bpf.c to compare against")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--cycles", type=int, default=30_000)
    args = ap.parse_args()
    base = Path(args.baseline)
    if not base.is_file():
        print(f"accept_ab: no such file: {base}", file=sys.stderr)
        return 2
    from tcptop_q.lab.netns import LabNetns
    from tcptop_q.probes import plan
    from tcptop_q.probes.bpf import BpfProbes

    texts = {"baseline": base.read_text(), "this tree": plan.ACCEPT_C.read_text()}
    tmp = tempfile.mkdtemp(prefix="tqbench-ab-")
    storm = os.path.join(tmp, "storm")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", storm, str(ROOT / "bench" / "storm.c")], check=True)
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    orig_c = plan.ACCEPT_C
    res: dict[tuple[str, str], list[float]] = {}
    try:
        stats.write_text("1")
        with LabNetns("accab") as ns:
            for rep in range(args.reps):
                order = list(texts) if rep % 2 == 0 else list(texts)[::-1]
                for name in order:
                    f = Path(tmp) / "accept.bpf.c"
                    f.write_text(texts[name])
                    plan.ACCEPT_C = f
                    p = BpfProbes(netns=ns.inode)
                    p.start()
                    if not p.wait_ready(180):
                        raise SystemExit(f"probes not live ({name}): {p.error}")
                    p.set_feed("off")
                    ids = set(p.prog_ids())
                    try:
                        before = bpftool_progs()
                        ns.run([storm, str(args.cycles), "10", "9100"], timeout=60)
                        for prog, (runs, t) in prog_deltas(before, bpftool_progs(), ids).items():
                            if prog in PROGRAMS:
                                res.setdefault((prog, name), []).append(t / runs)
                    finally:
                        p.close()
                print(f"rep {rep} done", flush=True)
    finally:
        plan.ACCEPT_C = orig_c
        stats.write_text(old)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    print("| program | baseline ns/run | this tree ns/run | runs (baseline; this tree) |")
    print("|---|---:|---:|---|")
    for prog in PROGRAMS:
        a, b = res.get((prog, "baseline")), res.get((prog, "this tree"))
        if a or b:
            ma = f"{statistics.median(a):.0f}" if a else "-"
            mb = f"{statistics.median(b):.0f}" if b else "-"
            print(f"| {prog} | {ma} | {mb} | {[round(x) for x in a or []]}; {[round(x) for x in b or []]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
