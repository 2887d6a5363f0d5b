from __future__ import annotations

import asyncio
import time

from .fake_source import CLOCK_TICK, build_snapshot


async def feed_ticks(app, pilot, upto: int = CLOCK_TICK, **kw) -> None:
    for tick in range(upto + 1):
        app.apply_snapshot(build_snapshot(tick, **kw))
    await pilot.pause()


async def wait_for(pilot, condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Wait on a condition with a deadline (never a bare sleep); the deadline is generous, a
    passing test never waits for it (the machine running CI may be loaded)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)
        await asyncio.sleep(0)


async def wait_screen(pilot, app, *needles: str, size: tuple[int, int] | None = None,
                      timeout: float = 20.0) -> str:
    """The screen's text once it shows every needle (and, with size, has settled at that size:
    no line wider, exactly that many lines); fails with the last text seen."""
    from .screen_text import screen_text

    seen = ""

    def ready() -> bool:
        nonlocal seen
        seen = screen_text(app)
        if size is not None:
            lines = seen.splitlines()
            if len(lines) != size[1] or any(len(line) > size[0] for line in lines):
                return False
        return all(n in seen for n in needles)

    try:
        await wait_for(pilot, ready, timeout=timeout, what=f"{needles} on screen")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the screen showed:\n{seen}") from None
    return seen
