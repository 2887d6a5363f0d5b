"""A SO_REUSEPORT group in the TUI: a marker on member rows, the members side by side on the
listener screen with the group's diagnosis, and a listener's other holders."""

from __future__ import annotations

from tcptop_q.model import ListenerKey

from .fake_source import HOST_NS, _listener
from .helpers import feed_ticks, wait_for
from .screen_text import screen_text

GROUP = f"{HOST_NS}/ipv4/0.0.0.0:9443"


def members():
    keys = [ListenerKey(HOST_NS, "ipv4", "0.0.0.0", 9443, cookie=c) for c in (501, 502, 503, 504)]
    out = [_listener(keys[0], inode=9001, pid=7001, comm="worker", queued_rate=47.0, reuseport_group=GROUP,
                     holders=(7001, 7005, 7006))]
    out += [_listener(k, inode=9002 + i, pid=7002 + i, comm="worker", accept_queue=129, backlog=128,
                      drop_rate=3.0, queued_rate=1.0, reuseport_group=GROUP) for i, k in enumerate(keys[1:])]
    return out


async def test_group_marker_section_and_diagnosis(make_app):
    group = members()
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot, extra=group)
        main = screen_text(app)
        rows = [line for line in main.splitlines() if ":9443" in line]
        assert len(rows) == 4 and all("⧉0.0.0.0:9443" in r for r in rows)
        assert not [line for line in main.splitlines() if "⧉" in line and ":9443" not in line]
        assert any("7001+2 worker" in r for r in rows)  # three holders: the lowest and +2

        app.open_listener(group[2].key)  # a full member's screen tells about the whole group
        await wait_for(pilot, lambda: "SO_REUSEPORT group: 4 members" in screen_text(app), what="group section")
        text = screen_text(app)
        assert "member pid 7001 takes 94 % of connections, 3 members' queues are full" in text
        assert "queued max/mean 3.8  fill max/mean 1.3" in text  # 47/12.5; (129/129)/(3/4)
        lines = text.splitlines()
        head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["cookie", "pid"])
        rows = [line.split() for line in lines[head + 1: head + 5]]
        assert [r[0] for r in rows] == ["501", "502", "▶", "504"] and rows[2][1] == "503"  # this member marked
        assert [r[-4] for r in rows[1:2] + rows[3:]] == ["129/128!", "129/128!"] and rows[0][2] == "0/4096"

        app.pop_screen()
        app.open_listener(group[0].key)
        await wait_for(pilot, lambda: "also held by pid 7005, 7006" in screen_text(app), what="holders")
