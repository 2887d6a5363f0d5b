#!/usr/bin/env python3
"""Process start to first output line: `tcpq-top --once --json`, `tcpq-top --batch -n 1` vs `ss -ltn`.

Each command runs inside a ScaleFixture netns through `ip netns exec` (so the wrapper cost is the
same for every command) with `--netns <that netns>`, at a small scale (10 listeners) and at
--listeners/--sockets (default 10k / 100k). Time = Popen to the first complete stdout line
(perf_counter), plus the time to exit. Commands interleaved, median of --reps.
Writes bench/results/first_output.json and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from scale_fixture import tcpq_argv  # noqa: E402  (also puts the tree under test on sys.path)

TCPQ = tcpq_argv()


def first_line(argv: list[str], timeout: float) -> tuple[float, float, bytes]:
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        first = time.perf_counter() - t0
        p.stdout.read()
        p.wait(timeout=timeout)
        return first * 1e3, (time.perf_counter() - t0) * 1e3, line
    finally:
        if p.poll() is None:
            p.kill()  # our own child, by pid
            p.wait()


def commands(ino: int, with_bpf: bool) -> dict[str, list[str]]:
    ns = ["--netns", str(ino)]
    cmds = {
        "ss -ltn (baseline)": ["ss", "-ltn"],
        "tcpq-top --once --json --no-bpf --interval 0.05": [*TCPQ, "--once", "--json", "--no-bpf", "--interval", "0.05", *ns],
        "tcpq-top --batch -n 1 --no-bpf -d 0.05": [*TCPQ, "--batch", "-n", "1", "--no-bpf", "-d", "0.05", *ns],
        "tcpq-top --batch -n 1 --no-bpf (default 1 s)": [*TCPQ, "--batch", "-n", "1", "--no-bpf", *ns],
    }
    if with_bpf:
        cmds["tcpq-top --batch -n 1 -d 0.05 (BPF)"] = [*TCPQ, "--batch", "-n", "1", "-d", "0.05", *ns]
    return cmds


def measure(listeners: int, sockets: int, reps: int, with_bpf: bool) -> dict:
    from scale_fixture import ScaleFixture

    with ScaleFixture(listeners, sockets) as fx:
        cmds = commands(fx.inode, with_bpf)
        runs: dict[str, list[tuple[float, float, bytes]]] = {k: [] for k in cmds}
        for argv in cmds.values():  # warm the page cache once
            first_line(fx.argv(argv), 120)
        for _ in range(reps):
            for k, argv in cmds.items():
                runs[k].append(first_line(fx.argv(argv), 120))
    return {k: {"first_ms": statistics.median(r[0] for r in v), "exit_ms": statistics.median(r[1] for r in v),
                "first_all": [round(r[0]) for r in v],
                "bpf_live_runs": sum(1 for r in v if b"bpf live" in r[2])} for k, v in runs.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--sockets", type=int, default=100_000)
    ap.add_argument("--no-bpf-run", action="store_true", help="skip the BPF --batch command")
    args = ap.parse_args()
    from scale_fixture import install_signal_cleanup, machine

    install_signal_cleanup()
    scales = {"10 listeners, 0 sockets": (10, 0), f"{args.listeners} listeners, {args.sockets} sockets": (args.listeners, args.sockets)}
    out = {}
    for label, (lis, socks) in scales.items():
        out[label] = measure(lis, socks, args.reps, not args.no_bpf_run)
        print(label, flush=True)
        print(table(out[label]), flush=True)
    res = __import__("scale_fixture").results_dir()
    res.mkdir(exist_ok=True)
    (res / "first_output.json").write_text(json.dumps({"machine": machine(), "reps": args.reps, "scales": out}, indent=1) + "\n")
    return 0


def table(r: dict) -> str:
    base = r["ss -ltn (baseline)"]["first_ms"]
    lines = ["| command | first line ms | / ss -ltn | exit ms |", "|---|---:|---:|---:|"]
    for k, v in r.items():
        lines.append(f"| `{k}` | {v['first_ms']:.0f} | {v['first_ms'] / base:.1f}x | {v['exit_ms']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
