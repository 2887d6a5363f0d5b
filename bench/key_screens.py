"""Key-to-screen latency of Enter (main table -> listener screen) and Escape (back) with many
listeners, headless Textual, fixed data (no kernel needed).

    .venv/bin/python bench/key_screens.py [--listeners 10000] [--reps 9] [--profile]

Between presses one new tick arrives (so Escape's main screen has a tick to catch up on, as
live). Each latency is the CPU time of this process (the app runs in it, headless) from the
key press to the new screen painted and idle: on a loaded shared machine wall time measures
the neighbours, CPU time the work (with 2 idle cores the two are the same). Prints
medians (ms) at the given size and, as the baseline measured in the same run, with 100
listeners; --profile prints the top cumulative functions of one Escape and one Enter.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcptop_q.app import TcpqTopApp  # noqa: E402
from tcptop_q.screens.listener import ListenerScreen  # noqa: E402
from tcptop_q.screens.main import MainScreen  # noqa: E402
from tests.ui.fake_source import FakeSource, build_snapshot, fixed_clock, many_listeners  # noqa: E402


async def until(pilot, pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError("screen never came")
        await asyncio.sleep(0)
    await pilot.pause()


async def run(n: int, reps: int, profile: bool = False) -> dict[str, float]:
    app = TcpqTopApp(FakeSource(), clock=fixed_clock, start_collector=False)
    snaps = [replace(build_snapshot(t), listeners=many_listeners(n, t, 0.2), connections=None, seq=t)
             for t in range(2 * reps + 2)]
    enter, escape = [], []
    prof = cProfile.Profile() if profile else None
    async with app.run_test(size=(160, 48)) as pilot:
        app.apply_snapshot(snaps[0])
        await pilot.pause()
        for i in range(reps):
            app.apply_snapshot(snaps[2 * i + 1])
            await pilot.pause()
            if prof and i == reps - 1:
                prof.enable()
            t0 = time.process_time()
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, ListenerScreen) and app.screen.is_mounted)
            enter.append((time.process_time() - t0) * 1000)
            app.apply_snapshot(snaps[2 * i + 2])
            await pilot.pause()
            t0 = time.process_time()
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, MainScreen))
            escape.append((time.process_time() - t0) * 1000)
            if prof and i == reps - 1:
                prof.disable()
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    return {"enter_median_ms": statistics.median(enter), "enter_max_ms": max(enter),
            "escape_median_ms": statistics.median(escape), "escape_max_ms": max(escape)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listeners", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    base = asyncio.run(run(100, args.reps))
    res = asyncio.run(run(args.listeners, args.reps, args.profile))
    for name, r in (("100 (baseline)", base), (str(args.listeners), res)):
        print(f"listeners={name:>14}  enter median {r['enter_median_ms']:.0f} ms (max {r['enter_max_ms']:.0f})"
              f"  escape median {r['escape_median_ms']:.0f} ms (max {r['escape_max_ms']:.0f})")
    print(f"ratio {args.listeners}/100: enter {res['enter_median_ms'] / base['enter_median_ms']:.2f}x"
          f"  escape {res['escape_median_ms'] / base['escape_median_ms']:.2f}x")


if __name__ == "__main__":
    main()
