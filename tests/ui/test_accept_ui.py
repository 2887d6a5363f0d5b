"""What the user sees of accept wait: the diagnosis, the WAIT99 cell, the listener
screen's histogram, --batch --wide. Summaries are built by the real histogram code
(probes/hist.py) from bucket counts, as the probes would give them."""

from __future__ import annotations

from dataclasses import replace

from tcptop_q.cli import format_batch
from tcptop_q.diagnosis import WARN, diagnose
from tcptop_q.model import HistCounts
from tcptop_q.probes import hist, layout
from tcptop_q.screens.listener import latency_line, wait_histogram
from tcptop_q.widgets.listener_table import render_cell

from .fake_source import KEY_8080, KEY_HTTP, build_snapshot

SYSCTLS = {"somaxconn": 4096, "tcp_max_syn_backlog": 512, "tcp_syncookies": 1, "tcp_abort_on_overflow": 0}


def _summary(waits_s: list[float], exact_max: bool = True):
    buckets: dict[int, int] = {}
    for w in waits_s:
        b = layout.bucket_of(int(w * 1e6))
        buckets[b] = buckets.get(b, 0) + 1
    return hist.summary(HistCounts(len(waits_s), int(sum(waits_s) * 1e9), int(max(waits_s) * 1e9), buckets), exact_max)


def _listener(key):
    snap = build_snapshot(3)
    return snap, next(lst for lst in snap.listeners if lst.key == key)


def test_slow_accept_is_named_before_any_overflow() -> None:
    _, lst = _listener(KEY_HTTP)
    waits = [0.1 * i for i in range(1, 11)] + [1.2] * 3
    slow = replace(lst, pid=4321, comm="api", accept_queue=3, backlog=128, drop_rate=0.0, overflow_rate=0.0,
                   accept_wait=_summary(waits), accept_wait_recent=_summary(waits, exact_max=False))
    findings = diagnose(slow, sysctls=SYSCTLS)
    assert findings[0].severity == WARN
    p99 = slow.accept_wait_recent.p99_s
    assert p99 is not None and 1.1 <= p99 <= 1.2
    assert f"connections wait {p99:.1f} s (p99) before pid 4321 (api) accepts them" in findings[0].text
    assert not any("healthy" in f.text for f in findings)
    fast = replace(slow, accept_wait_recent=_summary([0.001] * 5, exact_max=False))
    assert diagnose(fast, sysctls=SYSCTLS)[0].text.startswith("healthy")


def test_children_closed_in_the_queue_are_not_a_close_leak() -> None:
    snap, lst = _listener(KEY_8080)
    queued = [replace(cw, inode=0, queued_s=30.0 + i) for i, cw in enumerate(snap.close_wait)]
    texts = [f.text for f in diagnose(lst, sysctls=SYSCTLS, close_wait=queued)]
    # one wording for children never accepted (issue 16's), with the time they spent in the queue
    assert any("6 children closed by the peer before pid 1234 (server) accepted them (CLOSE_WAIT, still in "
               "the accept queue, oldest 35.0 s in the queue)" in t for t in texts), texts
    assert not any("never calls close()" in t for t in texts)


def test_wait_column_and_histogram_text() -> None:
    lat = _summary([0.004, 0.25, 0.26, 1.5])
    assert render_cell("wait_p99", (4, lat.p99_s), 0).plain == "1.5s"
    assert render_cell("wait_p99", (2, 0.25), 0).plain == "250ms"
    assert render_cell("wait_p99", None, 0).plain == "-"  # no accept hook: unknown
    assert render_cell("wait_p99", (0, None), 0).plain == "·"  # nothing accepted in the window
    text = wait_histogram(lat).plain.splitlines()
    assert text[0].startswith("accept wait")
    rows = text[1:]
    assert [int(r.split()[-1]) for r in rows] == [1, 2, 1]  # 4 ms, 250-260 ms, 1.5 s octaves
    assert "unknown" in wait_histogram(None).plain
    assert "nothing accepted" in wait_histogram(replace(lat, count=0)).plain
    assert latency_line(lat).startswith("p50 ")


def test_batch_wide_carries_accepted_rate_and_wait() -> None:
    snap = build_snapshot(3)
    lst = next(x for x in snap.listeners if x.key == KEY_HTTP)
    snap = replace(snap, listeners=[replace(lst, accepted=40, accepted_rate=12.5,
                                            accept_wait_recent=_summary([0.3] * 10, exact_max=False),
                                            handshake=_summary([0.0004] * 10))])
    out = format_batch(snap, wide=True).splitlines()
    head = next(line for line in out if line.startswith("LISTEN"))
    row = out[-1].split()
    cols = head.split()
    assert row[cols.index("ACC/s")] == "12.5"
    assert row[cols.index("WAIT99")] == "300ms"
    assert row[cols.index("HS50")] == "0.4ms"
