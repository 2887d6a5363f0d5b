"""Key-to-screen latency of Enter (main table -> listener screen), Escape (back) and the other
keys, with many listeners, headless Textual, fixed data (no kernel needed).

    .venv/bin/python bench/key_screens.py [--listeners 10000] [--reps 7] [--profile enter|escape]

What is timed: from the key press to the first frame that puts the new screen's content on
the terminal. Headless Textual renders nothing, so the bench renders every frame to the
escape sequences a terminal would get (`CompositorUpdate.render_segments`, what
`App._display` writes to the real driver) and a frame counts only when the text written since
the key, for the new screen, holds that screen's content: Enter the listener's address, its
owner pid, one of its child rows and the key hints; Escape the main table's status line, the
row under the bar and the key hints; `?` the legend. The other keys count when the frame
written after the key shows their effect (the bar moved, the sort arrow flipped, the TOTALS
marker and DROPS header, DROP/s back). "escape, new tick" is the first frame after the tick
that arrived while drilled in is applied to the table.
"idle" is the time until the app has nothing left to do (for Escape: the tick that arrived
while drilled in applied to the table after that first frame).

Between Enter and Escape one new tick arrives (so Escape's main screen has a tick to catch up
on, as live). Times are CPU time of this process (the app runs in it, headless): on a loaded
shared machine wall time measures the neighbours, CPU time the work (with 2 idle cores the two
are the same). Prints medians (ms) at the given size and, as the baseline measured in the same
run, with 100 listeners; --profile prints the top functions of the last Enter or Escape.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual._compositor import CompositorUpdate  # noqa: E402

from tcptop_q.app import TcpqTopApp  # noqa: E402
from tcptop_q.model import Connection  # noqa: E402
from tcptop_q.screens.listener import ListenerScreen  # noqa: E402
from tcptop_q.screens.main import MainScreen  # noqa: E402
from tcptop_q.screens.modals import HelpScreen  # noqa: E402
from tests.ui.fake_source import FakeSource, build_snapshot, fixed_clock, many_listeners  # noqa: E402

CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class Frames:
    """Every frame the app hands to its driver, rendered to terminal bytes as a real driver
    would, with the CPU time at which it was ready to be written."""

    def __init__(self, app: TcpqTopApp) -> None:
        self.log: list[tuple[float, object, str, object]] = []
        display = app._display

        def rendered(screen, renderable) -> None:
            display(screen, renderable)
            if renderable is None or app._batch_count:
                return
            if isinstance(renderable, CompositorUpdate):
                seq = renderable.render_segments(app.console)
            else:
                seq = app.console._render_buffer(app.console.render(renderable))
            # which tick the screen's rows show (MainScreen._applied_seq), as of this frame
            self.log.append((time.process_time(), screen, seq, getattr(screen, "_applied_seq", None)))

        app._display = rendered  # type: ignore[method-assign]

    def first(self, since: int, screen_is: Callable[[object], bool], markers: tuple[str, ...],
              seq: int | None = None) -> float | None:
        """CPU time of the first frame after `since` by which the text written for the screen
        holds every marker (each marker within one line; styles may split it); with `seq`,
        the first frame written after the screen's rows show tick `seq`."""
        text = ""
        for cpu, screen, out, shown in self.log[since:]:
            if not screen_is(screen):
                continue
            if seq is not None:
                if shown == seq:
                    return cpu
                continue
            text += CSI.sub(lambda m: "" if m.group().endswith("m") else "\n", out)
            if all(m in text for m in markers):
                return cpu
        return None


def children_for(listeners, per: int = 3):
    return {
        lst.key: tuple(
            Connection(lst.key.netns, "ipv4", "ESTABLISHED" if j else "CLOSE_WAIT", lst.key.laddr, lst.key.lport,
                       "127.0.0.1", 30000 + j, 900000 + j, 700000 + j, j, 0, lst.pid, lst.comm, 5.0 + j,
                       listener=lst.key)
            for j in range(per)
        )
        for lst in listeners
    }


async def until(pilot, pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError("screen never came")
        await asyncio.sleep(0)
    await pilot.pause()


async def run(n: int, reps: int, profile: str | None = None) -> dict[str, list[float]]:
    app = TcpqTopApp(FakeSource(), clock=fixed_clock, start_collector=False)
    frames = Frames(app)

    def snap(t: int):
        """Tick t, built when it arrives (as the collector would: the app holds what it
        keeps, no more; a pile of prebuilt ticks would make every GC pass slower)."""
        lst = many_listeners(n, t, 0.2)
        return replace(build_snapshot(t), listeners=lst, connections=children_for(lst) if t == 0 else None, seq=t)

    out: dict[str, list[float]] = {}
    prof = cProfile.Profile() if profile else None

    def note(name: str, cpu: float | None, t0: float, idle: float) -> None:
        if cpu is None:
            raise RuntimeError(f"{name}: no frame showed the new screen's content")
        out.setdefault(name, []).append((cpu - t0) * 1000)
        out.setdefault(name + " idle", []).append((idle - t0) * 1000)

    async def key(name: str, keys: str, screen_is, markers: tuple[str, ...], ready, profiled: bool = False,
                  fresh: str | None = None) -> None:
        mark = len(frames.log)
        if profiled and prof:
            prof.enable()
        t0 = time.process_time()
        await pilot.press(keys)
        await until(pilot, ready)
        idle = time.process_time()
        if profiled and prof:
            prof.disable()
        note(name, frames.first(mark, screen_is, markers), t0, idle)
        if fresh:  # the frame that shows the tick that came while the key's screen was away
            cpu = frames.first(mark, screen_is, (), seq=app.snapshot.seq if app.snapshot else None)
            if cpu is None:
                raise RuntimeError(f"{fresh}: no frame showed the newest tick")
            out.setdefault(fresh, []).append((cpu - t0) * 1000)

    async with app.run_test(size=(160, 48)) as pilot:
        app.apply_snapshot(snap(0))
        await pilot.pause()
        main = app.screen
        assert isinstance(main, MainScreen)
        table = main.table
        for i in range(reps):
            last = i == reps - 1
            app.apply_snapshot(snap(2 * i + 1))
            await pilot.pause()
            target = table.listener_at_cursor()
            assert target is not None
            lst = app.listener(target)
            assert lst is not None
            await key("enter", "enter", lambda s: isinstance(s, ListenerScreen),
                      (target.label(), f"pid {lst.pid}", "127.0.0.1:30002", "esc Back"),
                      lambda: isinstance(app.screen, ListenerScreen) and app.screen.is_mounted,
                      profiled=last and profile == "enter")
            app.apply_snapshot(snap(2 * i + 2))
            await pilot.pause()
            # Back on the table: its rows as they were left (the bar on the listener opened),
            # then the tick that came meanwhile ("escape, new tick").
            await key("escape", "escape", lambda s: s is main, (f"/{n} listeners", target.label(), "Sort"),
                      lambda: app.screen is main, profiled=last and profile == "escape", fresh="escape, new tick")
            # The other keys, same table, same size.
            row = table.cursor_row
            await key("down", "down", lambda s: s is main, (), lambda row=row: table.cursor_row == row + 1)
            await key("up", "up", lambda s: s is main, (), lambda row=row: table.cursor_row == row)
            await key("help ?", "question_mark", lambda s: isinstance(s, HelpScreen),
                      ("legend",), lambda: isinstance(app.screen, HelpScreen))
            await key("help escape", "escape", lambda s: s is main, (f"/{n} listeners", "Sort"),
                      lambda: app.screen is main)
            first = table.listener_at_cursor()
            await key("reverse r", "r", lambda s: s is main, ("▲",), lambda: app.sort_reverse)
            await key("reverse r again", "r", lambda s: s is main, ("▼",), lambda: not app.sort_reverse)
            assert table.listener_at_cursor() is not None and first is not None
            await key("totals t", "t", lambda s: s is main, ("TOTALS (t)", "DROPS"), lambda: table.totals)
            await key("totals t again", "t", lambda s: s is main, ("DROP/s",),
                      lambda: not table.totals)
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listeners", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--profile", choices=("enter", "escape"))
    args = ap.parse_args()
    base = asyncio.run(run(100, args.reps))
    res = asyncio.run(run(args.listeners, args.reps, args.profile))
    print(f"CPU ms, median of {args.reps} (max); load {os.getloadavg()[0]:.1f}")
    print(f"{'key':<18} {'100 listeners':>16} {str(args.listeners) + ' listeners':>18}  ratio")
    for name in res:
        b, r = base[name], res[name]
        print(f"{name:<18} {statistics.median(b):>8.0f} ({max(b):>5.0f}) {statistics.median(r):>9.0f} ({max(r):>5.0f})"
              f"  {statistics.median(r) / max(statistics.median(b), 0.1):.2f}x")


if __name__ == "__main__":
    main()
