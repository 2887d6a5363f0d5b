"""The JSON and recording codecs are derived from the model's fields (tcptop_q/codec.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from tcptop_q import codec, model
from tcptop_q.model import LatencySummary, Listener, ListenerKey
from tcptop_q.record import _listener_from_json

KEY = ListenerKey(4026531840, "ipv6", "::", 443, cookie=9)
LAT = LatencySummary(3, 0.75, 0.5, 0.125, 0.25, None, ((0.125, 1), (0.5, 2)))


def listener(**kw) -> Listener:
    base = dict(key=KEY, inode=7, pid=None, comm="srv", accept_queue=1, backlog=128, syn_queue=0, drops=3,
                drop_rate=0.5, children={"ESTABLISHED": 2})
    return Listener(**{**base, **kw})


def through_json(obj, cls):
    return codec.from_json(cls, json.loads(json.dumps(codec.to_json(obj))))


def test_a_field_added_to_a_listener_copy_round_trips_without_touching_the_codec():
    # A copy of Listener with three new metrics of the shapes a probe gives: what adding a field is.
    Wider = dataclasses.make_dataclass(
        "Wider",
        [("fresh_count", int | None, dataclasses.field(default=None)),
         ("fresh_latency", LatencySummary | None, dataclasses.field(default=None)),
         ("fresh_reasons", Mapping[str, int] | None, dataclasses.field(default=None))],
        bases=(Listener,), frozen=True,
    )
    src = listener(queued=5, queued_rate=1.5, accept_wait=LAT, drop_reasons={"X": 1})
    base = {f.name: getattr(src, f.name) for f in dataclasses.fields(Listener)}
    obj = Wider(**{**base, "fresh_count": 41, "fresh_latency": LAT, "fresh_reasons": {"NO_SOCKET": 2}})
    out = codec.to_json(obj)
    assert out["fresh_count"] == 41 and out["fresh_reasons"] == {"NO_SOCKET": 2}
    assert out["fresh_latency"]["buckets"] == [[0.125, 1], [0.5, 2]]
    assert through_json(obj, Wider) == obj
    # A reading written before the field existed still decodes: the field takes its default (unknown).
    old = {k: v for k, v in out.items() if not k.startswith("fresh_")}
    again = codec.from_json(Wider, old)
    assert again.fresh_count is None and again.fresh_latency is None and again.queued == 5


def test_listener_json_keeps_the_contract_names_and_nulls():
    out = model.listener_to_json(listener(queued=5, queued_rate=1.5))
    for name in ("netns", "family", "laddr", "lport", "cookie", "inode", "pid", "comm", "accept_queue", "backlog",
                 "syn_queue", "drops", "drop_rate", "overflows", "overflow_rate", "synack_retrans",
                 "synack_retrans_rate", "queued", "queued_rate", "accepts", "accept_rate", "accepted",
                 "accepted_rate", "accept_wait", "handshake", "drop_reasons", "peak_accept_queue", "resets_sent",
                 "resets_received", "children"):
        assert name in out, name
    assert "key" not in out
    assert (out["accepts"], out["accept_rate"]) == (5, 1.5)  # deprecated aliases of queued/queued_rate
    assert out["overflows"] is None and out["accept_wait"] is None and out["drop_reasons"] is None
    assert out["children"] == {"ESTABLISHED": 2} and isinstance(out["drop_rate"], float)


def test_a_recording_from_before_queued_existed_reads_accepts_as_queued():
    d = model.listener_to_json(listener())
    for name in ("queued", "queued_rate", "accepted", "accepted_rate", "accept_wait", "handshake", "drop_reasons"):
        del d[name]
    d["accepts"], d["accept_rate"] = 12, 2.0
    lst = _listener_from_json(d)
    assert (lst.queued, lst.queued_rate) == (12, 2.0) and lst.accepted is None and lst.accept_wait is None


def test_every_listener_field_survives_a_round_trip():
    full = listener(overflows=1, overflow_rate=0.0, synack_retrans=2, synack_retrans_rate=0.5, queued=3,
                    queued_rate=0.25, accepted=4, accepted_rate=1.0, peak_accept_queue=5, resets_sent=6,
                    resets_received=7, accept_wait=LAT, handshake=LatencySummary(0, 0.0, 0.0, None, None, None),
                    drop_reasons={"TCP_LISTEN_OVERFLOW": 3})
    assert _listener_from_json(json.loads(json.dumps(model.listener_to_json(full)))) == full


def test_socket_json_leaves_the_attribution_out():
    cw = model.CloseWait(1, "ipv4", "127.0.0.1", 80, "127.0.0.1", 5000, 3, 4, None, None, 0, None, listener=KEY)
    out = model.socket_to_json(cw)
    assert "listener" not in out
    assert codec.from_json(model.CloseWait, out) == dataclasses.replace(cw, listener=None)
