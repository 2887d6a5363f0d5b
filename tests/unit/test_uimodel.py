"""The collector -> UI hand-off is latest-only (tcptop_q/uimodel.py LatestSnapshot), without a terminal."""

from __future__ import annotations

import queue
import threading

from tcptop_q.model import ListenerKey, Snapshot, Sources, Transition
from tcptop_q.uimodel import LatestSnapshot

KEY = ListenerKey(1, "ipv4", "127.0.0.1", 80)


def snap(seq: int, events: int = 1, connections: bool = False) -> Snapshot:
    evs = tuple(Transition(float(seq), 1, seq * 100 + i, "ipv4", "127.0.0.1", 80, "127.0.0.1", 40000 + i,
                           "SYN_RECV", "ESTABLISHED", None, 0, "x") for i in range(events))
    return Snapshot(time=float(seq), interval=1.0, kernel="k", hostname="h", sources=Sources(True, False),
                    netns=[], listeners=[], close_wait=[], events=evs,
                    connections={KEY: ()} if connections else None, seq=seq)


def test_a_tick_not_taken_yet_is_replaced_not_queued():
    slot = LatestSnapshot()
    assert slot.put(snap(1, connections=True)) is True  # empty slot: wake the UI
    assert slot.put(snap(2)) is False and slot.put(snap(3)) is False  # already pending: no second wake-up
    got = slot.take()
    assert got is not None and got.seq == 3
    assert [ev.time for ev in got.events] == [1.0, 2.0, 3.0]  # the replaced ticks' feed events kept, in order
    assert got.connections == {KEY: ()}  # tick 1's children dump kept: tick 3 had none
    assert slot.take() is None and slot.replaced == 2


def test_a_slow_consumer_never_sees_a_backlog():
    """A producer 50x faster than the consumer: the consumer's inbox (one message per wake-up)
    never holds more than one message, each take is the newest tick, and no feed event is lost."""
    slot = LatestSnapshot()
    inbox: queue.Queue[None] = queue.Queue()
    produced = 400
    done = threading.Event()
    max_inbox = 0

    def producer() -> None:
        for seq in range(1, produced + 1):
            if slot.put(snap(seq)):
                inbox.put(None)  # what the app does: post_message(SnapshotPending())
        done.set()

    seen: list[int] = []
    events = 0
    t = threading.Thread(target=producer)
    t.start()
    while not (done.is_set() and inbox.empty()):
        try:
            inbox.get(timeout=0.01)
        except queue.Empty:
            continue
        max_inbox = max(max_inbox, inbox.qsize() + 1)
        got = slot.take()
        assert got is not None
        seen.append(got.seq)
        events += len(got.events)
        done.wait(0.002)  # the slow consumer: a UI frame that takes longer than a tick
    t.join()
    assert max_inbox == 1
    assert seen == sorted(seen) and seen[-1] == produced
    assert len(seen) < produced  # frames were skipped, not queued
    assert events == produced  # one event per tick, all carried through the replaced ticks
