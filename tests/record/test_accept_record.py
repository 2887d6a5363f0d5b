"""Recording and replay keep accepted, accept_wait (+recent), handshake, time in queue and
the timeline's accept line; old recordings with only `accepts` still read."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

from tcptop_q import record
from tcptop_q.model import HistCounts, Transition
from tcptop_q.probes import hist, layout
from tests.ui.fake_source import KEY_8080, build_snapshot


def _summary(waits_s: list[float]):
    buckets: dict[int, int] = {}
    for w in waits_s:
        buckets[layout.bucket_of(int(w * 1e6))] = buckets.get(layout.bucket_of(int(w * 1e6)), 0) + 1
    return hist.summary(HistCounts(len(waits_s), int(sum(waits_s) * 1e9), int(max(waits_s) * 1e9), buckets))


def test_accept_fields_round_trip() -> None:
    snap = build_snapshot(3)
    acc = Transition(snap.time, KEY_8080.netns, 0xFFFF1, "ipv4", "127.0.0.1", 8080, "127.0.0.1", 41000,
                     "ESTABLISHED", "ESTABLISHED", 812.5, 1234, "server", kind="accept", fd=7)
    listeners = [replace(lst, accepted=9, accepted_rate=1.5, accept_wait=_summary([0.1, 0.8, 1.2]),
                         accept_wait_recent=_summary([1.2]), handshake=_summary([0.0003, 0.0004]))
                 if lst.key == KEY_8080 else lst for lst in snap.listeners]
    cws = [replace(cw, inode=0, queued_s=12.5) for cw in snap.close_wait]
    snap = replace(snap, listeners=listeners, close_wait=cws, events=(acc,),
                   sources=replace(snap.sources, hooks={"queued": "tracepoint:sock:sk_data_ready"}))
    data = json.loads(json.dumps(record.snapshot_record_json(snap)))
    assert data["sources"]["hooks"]["accepts"] == "tracepoint:sock:sk_data_ready"  # the deprecated alias
    back = record.snapshot_from_json(data, [json.loads(json.dumps(dataclasses.asdict(acc)))])
    lst = next(x for x in back.listeners if x.key == KEY_8080)
    orig = next(x for x in snap.listeners if x.key == KEY_8080)
    assert (lst.accepted, lst.accepted_rate) == (9, 1.5)
    assert lst.accept_wait == orig.accept_wait and lst.handshake == orig.handshake
    assert lst.accept_wait_recent == orig.accept_wait_recent
    assert [cw.queued_s for cw in back.close_wait] == [12.5] * len(cws)
    assert [replace(e, listener=None) for e in back.events] == [acc]  # replay attributes it to its listener
    assert back.events[0].describe() == (
        "accepted by pid 1234 (fd 7) after 812.5 ms in the accept queue")
    assert back.sources.hooks == {"queued": "tracepoint:sock:sk_data_ready"}


def test_old_recording_with_accepts_only() -> None:
    data = json.loads(json.dumps(record.snapshot_record_json(build_snapshot(1))))
    data["sources"]["hooks"] = {"accepts": "kprobe:sock_def_readable"}
    for lst in data["listeners"]:
        lst.pop("queued")
        lst["accepts"] = 4
        for k in ("accepted", "accept_wait", "handshake", "accept_wait_recent"):
            lst.pop(k)
    back = record.snapshot_from_json(data)
    assert back.sources.hooks == {"queued": "kprobe:sock_def_readable"}
    assert all(x.queued == 4 and x.accepted is None and x.accept_wait is None for x in back.listeners)
