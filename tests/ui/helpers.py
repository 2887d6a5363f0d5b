from __future__ import annotations

import asyncio
import time

from .fake_source import CLOCK_TICK, build_snapshot


async def feed_ticks(app, pilot, upto: int = CLOCK_TICK, **kw) -> None:
    for tick in range(upto + 1):
        app.apply_snapshot(build_snapshot(tick, **kw))
    await pilot.pause()


async def wait_for(pilot, condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait on a condition with a deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)
        await asyncio.sleep(0)
