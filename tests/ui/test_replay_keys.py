"""Replay in the real app: pause stands still, ← → step one recorded tick, g G jump to the ends,
+ - change the speed; the header clock shows recorded time."""

from __future__ import annotations

import asyncio

from tcptop_q.app import TcpqTopApp
from tcptop_q.record import Recorder, ReplaySource

from .fake_source import build_snapshot


def make_recording(path, ticks: int = 6):
    with Recorder(path) as rec:
        for tick in range(ticks):
            rec.write(build_snapshot(tick))
    return [build_snapshot(tick) for tick in range(ticks)]


async def wait_until(pilot, pred, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await pilot.pause(0.05)


async def test_replay_keys_step_seek_and_pause(tmp_path):
    path = tmp_path / "rec.gz"
    snaps = make_recording(path)
    source = ReplaySource(path, speed=10)
    app = TcpqTopApp(source, clock=source.clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.snapshot is not None)
        await pilot.press("p")  # pause: the replay stands still
        await pilot.pause(0.3)
        shown = app.snapshot.time
        await pilot.pause(0.5)
        assert app.snapshot.time == shown
        await pilot.press("G")
        await wait_until(pilot, lambda: app.snapshot.time == snaps[-1].time)
        await pilot.press("left")
        await wait_until(pilot, lambda: app.snapshot.time == snaps[-2].time)
        await pilot.press("g")
        await wait_until(pilot, lambda: app.snapshot.time == snaps[0].time)
        await pilot.press("right")
        await wait_until(pilot, lambda: app.snapshot.time == snaps[1].time)
        assert app.clock() == snaps[1].time  # the header's clock is the recording's
        before = source.speed
        await pilot.press("minus")
        assert source.speed < before
        await pilot.press("q")


async def test_arrow_keys_are_not_taken_from_a_live_view(tmp_path):
    """Without a recording the replay actions are off and the arrows reach the table."""
    from .fake_source import FakeSource

    app = TcpqTopApp(FakeSource())
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.snapshot is not None)
        assert app.check_action("replay_step", (1,)) is False
        await pilot.press("right")  # must not raise or move anything in time
        await pilot.press("q")


async def test_replay_is_labelled_with_file_recorded_time_tick_and_end(tmp_path):
    from .screen_text import screen_text

    path = tmp_path / "incident.gz"
    snaps = make_recording(path)
    source = ReplaySource(path, speed=10)
    app = TcpqTopApp(source, clock=source.clock)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_until(pilot, lambda: app.snapshot is not None)
        await pilot.press("p")
        await pilot.press("g")
        await wait_until(pilot, lambda: app.snapshot.time == snaps[0].time)
        await pilot.pause()
        top = screen_text(app).splitlines()[0]
        assert "REPLAY incident.gz" in top and f"1/{len(snaps)}" in top
        assert "every " not in top and "recorded BPF: live" in top and "END" not in top
        await pilot.press("G")
        await wait_until(pilot, lambda: app.snapshot.time == snaps[-1].time)
        await pilot.pause()
        top = screen_text(app).splitlines()[0]
        assert f"{len(snaps)}/{len(snaps)}" in top and "END" in top
        await pilot.press("q")


async def test_recording_shows_REC(tmp_path):
    from tcptop_q.record import RecordingSource

    from .fake_source import FakeSource
    from .screen_text import screen_text

    source = RecordingSource(FakeSource(), tmp_path / "out.gz")
    app = TcpqTopApp(source)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.snapshot is not None)
        await pilot.pause()
        assert "REC out.gz" in screen_text(app).splitlines()[0]
        await pilot.press("q")


def test_drop_reasons_survive_a_recording(tmp_path):
    from dataclasses import replace

    path = tmp_path / "r.gz"
    snap = build_snapshot(0)
    snap = replace(snap, listeners=[replace(x, drop_reasons={"TCP_LISTEN_OVERFLOW": 3}) for x in snap.listeners])
    with Recorder(path) as rec:
        rec.write(snap)
    back = ReplaySource(path).sample()
    assert {x.drop_reasons["TCP_LISTEN_OVERFLOW"] for x in back.listeners} == {3}
