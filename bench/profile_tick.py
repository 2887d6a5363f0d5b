#!/usr/bin/env python3
"""Where a Sampler tick spends its time at scale: py-spy over N ticks inside a ScaleFixture.

    .venv/bin/python bench/profile_tick.py --listeners 10000 --sockets 100000 [--queued-close-wait 2000]

py-spy (`.venv/bin/pip install py-spy`, benchmark only) samples `--inner`, which takes one cold
sample and then --ticks warm sample(children=False) calls; only the warm ticks are inside the
window we aggregate (the inner marks them with a function name, `_warm_ticks`). Prints the top
functions by self time and by inclusive time within the warm ticks, and keeps the collapsed
stacks in bench/results/profile_<L>x<S>[_q<Q>].txt.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.environ.get("TQBENCH_TREE") or str(ROOT))  # see scale_fixture.TREE
sys.path.insert(0, str(ROOT / "bench"))


def _warm_ticks(s, n: int) -> float:
    c = time.process_time()
    for _ in range(n):
        s.sample(1.0, children=False)
    return (time.process_time() - c) * 1e3 / n


def inner(ticks: int) -> None:
    from tcptop_q.sampler import Sampler

    s = Sampler(all_netns=False, blocking_owners=True, children_every=1e9)
    s.sample(0.0, children=True)
    per = _warm_ticks(s, ticks)
    s.close()
    print(json.dumps({"tick_cpu_ms": per}))


def aggregate(collapsed: str, top: int, lines: bool = False) -> str:
    short = _short if lines else _func
    self_t: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if "_warm_ticks" not in stack:
            continue
        frames = stack.split(";")
        i = max(k for k, f in enumerate(frames) if f.startswith("_warm_ticks"))
        frames = frames[i + 1:]
        count = int(n)
        total += count
        if frames:
            self_t[short(frames[-1])] += count
        for f in {short(f) for f in frames}:
            incl[f] += count
    out = [f"samples in warm ticks: {total}", "", "| self % | function |", "|---:|---|"]
    for f, c in self_t.most_common(top):
        out.append(f"| {100 * c / total:.1f} | `{f}` |")
    out += ["", "| inclusive % | function |", "|---:|---|"]
    for f, c in incl.most_common(top):
        out.append(f"| {100 * c / total:.1f} | `{f}` |")
    return "\n".join(out)


def _func(frame: str) -> str:
    name, _, where = _short(frame).partition(" (")
    return f"{name} ({where.rpartition(':')[0]})"


def _short(frame: str) -> str:
    # py-spy frames: "func (path/file.py:line)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    marker = "site-packages/"
    if marker in path:
        path = path.split(marker, 1)[1]
    elif "/work/main/" in path:
        path = path.split("/work/main/", 1)[1]
    else:
        path = path.rsplit("/", 1)[-1]
    return f"{name} ({path}:{line})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--sockets", type=int, default=100_000)
    ap.add_argument("--queued-close-wait", type=int, default=0)
    ap.add_argument("--ticks", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.ticks)
        return 0
    from scale_fixture import ScaleFixture, install_signal_cleanup, python_exe

    install_signal_cleanup()
    tag = f"{args.listeners}x{args.sockets}" + (f"_q{args.queued_close_wait}" if args.queued_close_wait else "")
    res = __import__("scale_fixture").results_dir()
    res.mkdir(exist_ok=True)
    raw = res / f"profile_{tag}.txt"
    pyspy = str(ROOT / ".venv" / "bin" / "py-spy")
    with ScaleFixture(args.listeners, args.sockets, queued_close_wait=args.queued_close_wait) as fx:
        out = fx.exec([pyspy, "record", "--format", "raw", "--rate", "250", "-o", str(raw), "--",
                       python_exe(), __file__, "--inner", "--ticks", str(args.ticks)], timeout=1800)
    last = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    print(f"{tag}: {last[-1] if last else out.stdout[-300:]}")
    print("By function:")
    print(aggregate(raw.read_text(), args.top))
    print("\nBy line:")
    print(aggregate(raw.read_text(), args.top, lines=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
