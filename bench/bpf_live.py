#!/usr/bin/env python3
"""Time from BpfProbes.start() to "live" (compile + load + attach), median of N fresh processes.

Each run is a new interpreter, as a user starting tcpq-top would see it (no warm clang).
Usage (root): .venv/bin/python bench/bpf_live.py [-n 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE_RUN = """
import json, time
t0 = time.monotonic()
from tcptop_q.probes.bpf import BpfProbes
t_import = time.monotonic() - t0
p = BpfProbes()
t1 = time.monotonic()
p.start()
ok = p.wait_ready(60)
t_live = time.monotonic() - t1
print(json.dumps({"ok": ok, "error": p.error, "import": t_import, "live": t_live, **p.timings}))
p.close()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = []
    for _ in range(args.n):
        out = subprocess.run([sys.executable, "-c", ONE_RUN], cwd=ROOT, capture_output=True, text=True, timeout=120)
        line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
        run = json.loads(line)
        if not run.get("ok"):
            print(f"probes did not go live: {run.get('error') or out.stderr.strip()[:200]}", file=sys.stderr)
            return 1
        runs.append(run)
    med = {k: statistics.median(r[k] for r in runs) for k in ("live", "plan", "compile", "attach", "import")}
    if args.json:
        print(json.dumps({"runs": runs, "median": med}))
        return 0
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, {args.n} fresh processes")
    print(f"start() -> live: median {med['live'] * 1000:.0f} ms "
          f"(min {min(r['live'] for r in runs) * 1000:.0f}, max {max(r['live'] for r in runs) * 1000:.0f})")
    print(f"  plan (BTF + format files) {med['plan'] * 1000:.0f} ms, compile+load {med['compile'] * 1000:.0f} ms, "
          f"attach {med['attach'] * 1000:.0f} ms; import {med['import'] * 1000:.0f} ms before start()")
    return 0


if __name__ == "__main__":
    sys.exit(main())
