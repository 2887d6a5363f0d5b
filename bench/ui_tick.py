"""Per-tick apply cost of the UI with many listeners (headless Textual, fixed data).

    .venv/bin/python bench/ui_tick.py [--listeners 10000] [--ticks 15] [--changing 1.0]

Measures TcpqTopApp.apply_snapshot() (history + filter + sort + by-key table update,
inside batch_update) plus the paint that follows, per tick; prints medians in ms.
`--changing` is the fraction of listeners whose shown values change every tick
(1.0 = worst case, every row re-rendered).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcptop_q.app import TcpqTopApp  # noqa: E402
from tests.ui.fake_source import FakeSource, build_snapshot, fixed_clock, many_listeners  # noqa: E402


async def run(n: int, ticks: int, changing: float, size: tuple[int, int]) -> dict[str, float]:
    app = TcpqTopApp(FakeSource(), clock=fixed_clock, start_collector=False)
    snaps = [
        replace(build_snapshot(t), listeners=many_listeners(n, t, changing), connections=None, seq=t)
        for t in range(ticks + 1)
    ]
    apply_ms, paint_ms = [], []
    async with app.run_test(size=size) as pilot:
        t0 = time.perf_counter()
        app.apply_snapshot(snaps[0])
        await pilot.pause()
        first = (time.perf_counter() - t0) * 1000
        for snap in snaps[1:]:
            t0 = time.perf_counter()
            app.apply_snapshot(snap)
            t1 = time.perf_counter()
            await pilot.pause()  # idle handlers + one screen update
            t2 = time.perf_counter()
            apply_ms.append((t1 - t0) * 1000)
            paint_ms.append((t2 - t1) * 1000)
        assert app.screen.table.row_count == n
        # a re-sort that moves the cursor's listener: still cheap?
        await pilot.press("r")
        t0 = time.perf_counter()
        await pilot.press("r")
        resort = (time.perf_counter() - t0) * 1000
    return {
        "first_ms": first,
        "apply_median_ms": statistics.median(apply_ms),
        "apply_max_ms": max(apply_ms),
        "paint_median_ms": statistics.median(paint_ms),
        "tick_median_ms": statistics.median(a + p for a, p in zip(apply_ms, paint_ms, strict=False)),
        "resort_key_ms": resort,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10000)
    ap.add_argument("--ticks", type=int, default=15)
    ap.add_argument("--changing", type=float, default=1.0)
    ap.add_argument("--size", default="160x48")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    res = asyncio.run(run(args.listeners, args.ticks, args.changing, (w, h)))
    print(f"listeners={args.listeners} changing={args.changing:g} size={args.size} ticks={args.ticks}")
    for k, v in res.items():
        print(f"{k:>18}: {v:8.1f}")
    print(f"median tick ms: {res['tick_median_ms']:.1f}")


if __name__ == "__main__":
    main()
