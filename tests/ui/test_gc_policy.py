"""The UI schedules its full GC passes (tcptop_q/app.py, GC_*): never started by Python on
its own while the app runs (one pass at 10k listeners cost most of Escape's time to the table,
docs/BENCHMARKS.md), run after a tick's frame when due and the keyboard is quiet."""

from __future__ import annotations

import gc

from tcptop_q import app as appmod

from .fake_source import CLOCK_TICK, build_snapshot
from .helpers import feed_ticks, wait_for


def full_passes() -> int:
    return gc.get_stats()[2]["collections"]


async def test_python_starts_no_full_pass_while_the_app_runs_and_the_setting_is_restored(make_app):
    before = gc.get_threshold()
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed_ticks(app, pilot)
        assert gc.get_threshold() == (before[0], before[1], appmod.GC_NO_AUTO_FULL)
    assert gc.get_threshold() == before


async def test_a_due_full_pass_runs_after_the_tick_once_the_keyboard_is_quiet(make_app, monkeypatch):
    monkeypatch.setattr(appmod, "GC_EVERY_S", 0.0)
    monkeypatch.setattr(appmod, "GC_LATEST_S", 3600.0)
    monkeypatch.setattr(appmod, "GC_QUIET_S", 3600.0)  # a key just came: not now
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("down")
        n = full_passes()
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1))
        await pilot.pause()
        assert full_passes() == n
        monkeypatch.setattr(appmod, "GC_QUIET_S", 0.0)  # quiet now: the next tick runs it
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 2))
        await wait_for(pilot, lambda: full_passes() > n, what="a full GC pass after the tick")
        # while the keys keep coming, GC_LATEST_S still bounds the wait
        monkeypatch.setattr(appmod, "GC_QUIET_S", 3600.0)
        monkeypatch.setattr(appmod, "GC_LATEST_S", 0.0)
        await pilot.press("down")
        m = full_passes()
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 3))
        await wait_for(pilot, lambda: full_passes() > m, what="the overdue full pass")
