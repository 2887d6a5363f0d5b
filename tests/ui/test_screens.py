"""Drill-down screens, the feed, the collector thread, help and the command palette."""

from __future__ import annotations

import threading

from tcptop_q.app import TcpqTopApp
from tcptop_q.screens import keys as keycat
from tcptop_q.screens.closewait import CloseWaitScreen, CloseWaitSocketsScreen, group_close_wait
from tcptop_q.screens.listener import ListenerScreen
from tcptop_q.screens.main import MainScreen
from tcptop_q.screens.socket import SocketScreen
from tcptop_q.uimodel import History

from .fake_source import CLOCK_TICK, KEY_8080, SERVER_PID, FakeSource, build_snapshot, close_waits
from .helpers import feed_ticks, wait_for, wait_screen
from .screen_text import screen_text


async def test_listener_screen_shows_diagnosis_process_sysctls_children(make_app):
    source = FakeSource()
    app = make_app(source)
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, ListenerScreen) and screen.key == KEY_8080
        await wait_for(pilot, lambda: screen.process_loaded, what="process info")
        text = screen_text(app)
        assert "accept queue full 6/5" in text
        assert "pid 1234 (server) is not calling accept() fast enough" in text
        assert "./server --port 8080" in text and "RSS 3.0 MiB" in text
        assert "tcp_max_syn_backlog 512" in text
        assert "CLOSE_WAIT 6" in text
        assert len(screen.conns) == 6 and all(c.recv_q == 11 for c in screen.conns.values())
        # psutil data is read off the UI thread
        assert source.process_info_calls == [SERVER_PID]
        assert threading.main_thread().name not in source.info_threads
        assert "peak accept queue now 6" in text and f"({CLOCK_TICK + 1} samples)" in text


async def test_child_opens_the_socket_timeline(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("enter", "enter")
        screen = app.screen
        assert isinstance(screen, SocketScreen)
        assert screen.ref.rport == 41010  # oldest CLOSE_WAIT child first
        await wait_for(pilot, lambda: screen.timeline is not None, what="timeline")
        text = screen_text(app)
        assert "LISTEN → SYN_RECV" in text and "ESTABLISHED → CLOSE_WAIT" in text
        assert "CLOSE_WAIT" in text and "recv_q 11" in text
        await pilot.press("escape")
        assert isinstance(app.screen, ListenerScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_close_wait_view_groups_by_process(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, CloseWaitScreen)
        first = screen.groups[screen.query_one("#groups").order[0]]
        assert (first.pid, first.comm, first.count, first.recv_q) == (SERVER_PID, "server", 6, 66)
        assert "7 sockets in 2 processes" in screen_text(app)
        await pilot.press("enter")
        assert isinstance(app.screen, CloseWaitSocketsScreen)
        assert len(app.screen.rows) == 6
        cw = app.screen.rows[app.screen.query_one("#sockets").cursor_key()]
        await pilot.press("enter")
        assert isinstance(app.screen, SocketScreen)
        ref = app.screen.ref
        assert ref.pid == SERVER_PID
        fields = ("netns", "family", "laddr", "lport", "raddr", "rport", "cookie", "inode", "pid", "comm")
        assert [getattr(ref, f) for f in fields] == [getattr(cw, f) for f in fields]  # the row it was opened on


def test_group_close_wait_sorts_by_age_count_recv_q():
    rows = close_waits(0, 0.0)
    by_age = group_close_wait(rows, "oldest")
    assert [g.pid for g in by_age] == [SERVER_PID, 4321]
    assert by_age[0].oldest == 55.0 and by_age[0].ports == (8080,)
    assert [g.pid for g in group_close_wait(rows, "oldest", reverse=True)] == [4321, SERVER_PID]
    assert [g.pid for g in group_close_wait(rows, "recv_q")] == [SERVER_PID, 4321]


async def test_close_wait_sort_key_cycles(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("c", "s")
        assert app.screen.sort == "count"
        await pilot.press("r")
        assert app.screen.groups[app.screen.query_one("#groups").order[0]].pid == 4321


async def test_feed_shows_events_lost_count_pause_and_follow(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        feed = app.screen.feed
        await wait_for(pilot, lambda: feed.table.row_count == 5 * (CLOCK_TICK + 1), what="feed flush")
        assert "lost 10" in feed.border_title
        assert "SYN-RECV→ESTAB" in screen_text(app)
        await pilot.press("P")
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1))
        await pilot.pause(0.25)
        assert feed.table.row_count == 5 * (CLOCK_TICK + 1) and "PAUSED" in feed.border_title
        await pilot.press("P")
        await wait_for(pilot, lambda: feed.table.row_count == 5 * (CLOCK_TICK + 2), what="resume")
        await pilot.press("down")  # cursor on 0.0.0.0:80: no events
        await pilot.press("F")
        assert feed.follow_key is not None and feed.follow_key.lport == 80
        assert feed.table.row_count == 0


async def test_feed_updates_are_batched(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        feed = app.screen.feed
        for tick in range(30):  # 30 snapshots arrive at once
            app.apply_snapshot(build_snapshot(tick))
        await pilot.pause(0.3)
        assert feed.table.row_count == 150
        assert feed.flushes <= 4  # one per 100 ms timer tick at most, not one per snapshot


async def test_feed_line_opens_the_socket_screen(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await wait_for(pilot, lambda: app.screen.feed.table.row_count > 0, what="feed")
        await pilot.press("tab")
        assert app.screen.feed.table.has_focus
        await pilot.press("enter")
        assert isinstance(app.screen, SocketScreen)
        assert app.screen.ref.lport == 8080 and app.screen.ref.raddr == "127.0.0.1"


async def test_collector_thread_samples_off_the_ui_thread_and_stops(make_app):
    source = FakeSource(interval=0.05)
    app = make_app(source, start_collector=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.ticks_applied >= 3, what="three collected ticks")
        assert source.sample_threads == {"tcpq-collector"}
        thread = app._thread
        assert thread is not None and thread.daemon and thread.is_alive()
        assert len(app.screen.table.order) == 6
    assert source.closed
    assert not thread.is_alive()


async def test_collector_error_is_shown_not_raised(make_app):
    class Broken(FakeSource):
        def sample(self):
            raise PermissionError("sock_diag: Operation not permitted")

    app = make_app(Broken(interval=0.05), start_collector=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.collector_error is not None, what="collector error")
        assert "Operation not permitted" in app.collector_error


async def test_help_screen_lists_the_whole_catalogue(make_app):
    app = make_app()
    async with app.run_test(size=(110, 110)) as pilot:
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"
        text = screen_text(app)
        for k in keycat.CATALOGUE:
            if keycat.replay_only(k):  # live: no replay keys offered
                assert k.description not in text, k.id
            else:
                assert k.description in text, k.id
        assert "equals_sign" not in text and "question_mark" not in text
        assert "+ / =" in text
        assert "ListenDrops" in text and "sk_drops" in text  # the legend tells the two drops apart
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_command_palette_offers_catalogue_actions(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        titles = {cmd.title: cmd for cmd in app.get_system_commands(app.screen)}
        for k in keycat.for_scopes("main"):
            if k.palette:
                assert k.description in titles
        for k in keycat.for_scopes("app"):
            if keycat.replay_only(k):  # live mode: no replay keys in the palette
                assert k.description not in titles
        titles["Reverse"].callback()
        await pilot.pause()
        assert app.sort_reverse is True


def test_bindings_come_from_the_catalogue():
    ids = {b.id for b in MainScreen.BINDINGS} | {b.id for b in TcpqTopApp.BINDINGS}
    assert ids == {k.id for k in keycat.for_scopes("main", "app")}
    assert all(b.id for b in ListenerScreen.BINDINGS)


def test_history_is_bounded():
    hist = History(length=4)
    for tick in range(10):
        hist.add(build_snapshot(tick))
    assert hist.get(KEY_8080, "drop_rate") == [10.0] * 4
    assert len(hist.get(KEY_8080, "peak")) == 4


async def test_feed_keeps_collecting_while_drilled_in(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("enter")
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1))
        await pilot.press("escape")
        feed = app.screen.feed
        await wait_for(pilot, lambda: feed.table.row_count == 5 * (CLOCK_TICK + 2), what="feed catch-up")


async def test_process_info_is_reread_each_tick_off_thread(make_app):
    source = FakeSource()
    app = make_app(source)
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen.process_loaded, what="process info")
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1))
        await wait_for(pilot, lambda: len(source.process_info_calls) == 2, what="re-read")
        assert threading.main_thread().name not in source.info_threads


async def test_listener_that_disappears_is_shown_gone_and_main_table_drops_it(make_app):
    from dataclasses import replace

    app = make_app(FakeSource())
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, ListenerScreen) and screen.key == KEY_8080
        snap = build_snapshot(CLOCK_TICK + 1)
        app.apply_snapshot(replace(snap, listeners=[x for x in snap.listeners if x.key != KEY_8080]))
        await wait_for(pilot, lambda: "gone" in screen_text(app), what="gone notice")
        assert "no longer listening" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen), what="back to main")
        assert "0.0.0.0:8080" not in screen_text(app)


async def test_listener_screen_at_80x24_shows_owner_headline_queue_and_children(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ListenerScreen), what="listener screen")
        text = await wait_screen(pilot, app, "pid 1234 server", "127.0.0.1:41010", size=(80, 24))
        assert "pid 1234 server" in text and "accept 6/5!" in text
        assert "✖ accept queue full 6/5" in text and "more: D" in text
        assert "127.0.0.1:41010" in text and "CLOSE_WAIT" in text  # a child row, no scrolling
        await pilot.press("D")  # every finding
        assert "never calls close()" in screen_text(app)
        await pilot.press("D", "d")  # fold the findings, unfold the details (they scroll)
        assert "accept queue 6/5 ██████████!" in screen_text(app)
        assert app.screen.query_one("#detail").display


async def test_listener_screen_at_120x40_shows_children_and_details(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ListenerScreen), what="listener screen")
        text = await wait_screen(pilot, app, "127.0.0.1:41010", "sk_drops", size=(120, 40))
        assert "127.0.0.1:41000" in text  # all six children
        assert "sk_drops 170 since the socket was created" in text and "overflows 170 since 22:13" in text


async def test_listener_screen_shows_drop_reasons(make_app):
    from dataclasses import replace

    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        snap = build_snapshot(CLOCK_TICK + 1)
        app.apply_snapshot(replace(snap, listeners=[
            replace(x, drop_reasons={"TCP_LISTEN_OVERFLOW": 7, "SOCKET_FILTER": 1}) if x.key == KEY_8080 else x
            for x in snap.listeners]))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ListenerScreen), what="listener screen")
        await pilot.pause()
        text = screen_text(app)
        assert "drop reasons (since 22:13)" in text
        lines = text.splitlines()
        i = next(n for n, line in enumerate(lines) if "TCP_LISTEN_OVERFLOW" in line)
        assert "7 TCP_LISTEN_OVERFLOW" in lines[i] and "1 SOCKET_FILTER" in lines[i + 1]


async def test_export_writes_svg_and_text_and_says_where(make_app, tmp_path, monkeypatch):
    monkeypatch.setenv("TCPQ_EXPORT_DIR", str(tmp_path))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("e")
        await pilot.pause()
        svgs, txts = list(tmp_path.glob("tcpq-top-*.svg")), list(tmp_path.glob("tcpq-top-*.txt"))
        assert len(svgs) == 1 and len(txts) == 1
        assert "0.0.0.0:8080" in txts[0].read_text() and svgs[0].read_text().startswith("<svg")
        assert any(str(svgs[0]) in n.message for n in app._notifications)
        # Textual's palette "Screenshot" is the same export
        titles = {c.title: c for c in app.get_system_commands(app.screen)}
        titles["Screenshot"].callback()
        await pilot.pause()
        assert len(list(tmp_path.glob("tcpq-top-*.txt"))) >= 1


async def test_copy_offers_the_commands_for_the_selected_listener(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed_ticks(app, pilot)
        key = app.screen.table.listener_at_cursor()
        lst = app.listener(key)
        await pilot.press("y")
        assert type(app.screen).__name__ == "CopyPicker"
        await pilot.press("enter")
        await pilot.pause()
        assert app.clipboard == f"nsenter -t {lst.pid} -n ss -ltnpm 'sport = :{key.lport}'"


async def test_slash_filters_the_feed_too(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        feed = app.screen.feed
        await wait_for(pilot, lambda: feed.table.row_count > 0, what="feed")
        await pilot.press("slash", *"5432", "enter")
        await pilot.pause(0.3)
        assert all(ev.lport == 5432 for ev in feed.by_key.values())
        assert "filter 5432" in str(feed.border_title)


async def test_signal_to_the_owner_asks_first_naming_pid_and_cmdline(make_app):
    import signal
    import subprocess
    import sys
    from dataclasses import replace

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            snap = build_snapshot(CLOCK_TICK)
            app.apply_snapshot(replace(snap, listeners=[
                replace(x, pid=child.pid, comm="sleeper") if x.key == KEY_8080 else x for x in snap.listeners]))
            await pilot.pause()
            assert app.screen.table.listener_at_cursor() == KEY_8080
            await pilot.press("f9")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "SignalConfirm", what="confirmation")
            assert f"send a signal to pid {child.pid}" in screen_text(app)
            await pilot.press("escape")  # cancel: nothing sent
            await pilot.pause()
            assert child.poll() is None
            await pilot.press("f9")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "SignalConfirm", what="confirmation")
            await pilot.press("down", "enter")  # SIGTERM
            assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
