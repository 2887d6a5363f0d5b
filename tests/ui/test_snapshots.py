"""SVG snapshot tests at 80x24 (ssh default), 120x40 and 160x48, fixed clock, TZ=UTC (conftest).

Regenerate after an intended change with:
    .venv/bin/python -m pytest tests/ui/test_snapshots.py --snapshot-update
and look at the SVGs (tests/ui/__snapshots__/) before committing them.
"""

from __future__ import annotations

import pytest

from tcptop_q.app import TcpqTopApp

from .fake_source import FakeSource, fixed_clock
from .helpers import feed_ticks, wait_for


def make() -> TcpqTopApp:
    return TcpqTopApp(FakeSource(), clock=fixed_clock, start_collector=False)


def loaded(*keys: str, wait=None):
    async def run_before(pilot) -> None:
        app = pilot.app
        await feed_ticks(app, pilot)
        await wait_for(pilot, lambda: app.screen.feed.table.row_count == 30, what="feed flush")
        await pilot.press(*keys)
        if wait is not None:
            await wait_for(pilot, lambda: wait(app), what="screen data")
        await pilot.pause()

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 48)], ids=["80x24", "120x40", "160x48"])
def test_main_screen(snap_compare, size):
    assert snap_compare(make(), terminal_size=size, run_before=loaded())


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (160, 48)], ids=["80x24", "120x40", "160x48"])
def test_listener_screen(snap_compare, size):
    assert snap_compare(
        make(), terminal_size=size, run_before=loaded("enter", wait=lambda app: app.screen.process_loaded)
    )


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_close_wait_screen(snap_compare, size):
    assert snap_compare(make(), terminal_size=size, run_before=loaded("c"))


def test_help_with_legend_120x40(snap_compare):
    assert snap_compare(make(), terminal_size=(120, 40), run_before=loaded("question_mark"))


def test_socket_screen_80x24(snap_compare):
    assert snap_compare(
        make(),
        terminal_size=(80, 24),
        run_before=loaded(
            "enter", "enter", wait=lambda app: app.screen.timeline is not None and app.screen.process_loaded
        ),
    )


def test_main_filtered_narrow_with_feed_80x24(snap_compare):
    assert snap_compare(make(), terminal_size=(80, 24), run_before=loaded("slash", *"808", "enter", "f"))
