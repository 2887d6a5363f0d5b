"""Pilot tests of the main screen over scripted seed-experiment-1 snapshots."""

from __future__ import annotations

from dataclasses import replace

from tcptop_q.model import sort_listeners
from tcptop_q.screens.listener import ListenerScreen
from tcptop_q.screens.main import MainScreen
from tcptop_q.widgets.listener_table import row_key

from .fake_source import (
    CLOCK_TICK,
    CONTAINER_NS,
    KEY_8080,
    KEY_HTTPS6,
    KEY_PG,
    KEY_SSH,
    build_snapshot,
)
from .helpers import feed_ticks, wait_for, wait_screen
from .screen_text import screen_text


def order(app):
    return list(app.screen.table.order)


async def test_default_sort_puts_what_is_wrong_now_first(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        assert app.sort_key == "severity"
        assert order(app)[0] == row_key(KEY_8080)  # drops and overflows now
        assert "sort what is wrong now" in screen_text(app)


async def test_a_growing_close_wait_pile_ranks_with_overflows(make_app):
    """A CLOSE_WAIT leak (no overflow, no drops) sorts above the idle listeners, next to the
    overflowing one, while it grows."""
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        for tick, cw in ((CLOCK_TICK + 1, 6), (CLOCK_TICK + 2, 9)):
            snap = build_snapshot(tick)
            app.apply_snapshot(replace(snap, listeners=[
                replace(lst, children={"ESTABLISHED": 1, "CLOSE_WAIT": cw}) if lst.key == KEY_SSH else lst
                for lst in snap.listeners]))
        await pilot.pause()
        assert order(app)[:2] == [row_key(KEY_8080), row_key(KEY_SSH)]


async def test_overflow_sort_marks_its_column(make_app):
    app = make_app(sort="overflow_rate")
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        snap = build_snapshot(CLOCK_TICK)
        want = [row_key(lst.key) for lst in sort_listeners(snap.listeners, "overflow_rate")]
        assert order(app) == want
        assert order(app)[0] == row_key(KEY_8080)
        assert "OVF/s▼" in screen_text(app)


async def test_reverse_flips_the_order_and_the_arrow(make_app):
    app = make_app(sort="overflow_rate")
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        before = order(app)
        await pilot.press("r")
        assert order(app) == list(reversed(before))
        assert "OVF/s▲" in screen_text(app)


async def test_sort_picker_sorts_by_accepts(make_app):
    app = make_app(sort="overflow_rate")
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("s")
        picker = app.screen.query_one("#picker")
        ids = [picker.get_option_at_index(i).id for i in range(picker.option_count)]
        moves = ids.index("queued_rate") - ids.index("overflow_rate")
        for _ in range(moves):
            await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        assert app.sort_key == "queued_rate"
        assert order(app)[0] == row_key(KEY_HTTPS6)  # 120 accepts/s
        assert "QUE/s▼" in screen_text(app)


async def test_f6_opens_the_sort_picker(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("f6")
        assert type(app.screen).__name__ == "SortPicker"
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen) and app.sort_key == "severity"


async def test_live_filter_by_port_comm_and_clear(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("slash", *"5432")
        assert order(app) == [row_key(KEY_PG)]
        await pilot.press("enter")
        assert app.screen.table.has_focus
        assert "filter 5432" in screen_text(app)
        await pilot.press("escape")
        assert len(order(app)) == 6
        await pilot.press("slash", *"nginx", "enter")
        assert len(order(app)) == 2 and all("|80|" in k or "|443|" in k for k in order(app))
        await pilot.press("slash", "ctrl+u", *"10.0.3", "enter")
        assert order(app) == [row_key(KEY_PG)]


async def test_filter_survives_new_snapshots(make_app):
    app = make_app(filter_text="sshd")
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1))
        await pilot.pause()
        assert order(app) == [row_key(KEY_SSH)]


async def test_enter_drills_and_escape_returns_to_the_same_row(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("j", "j")
        key = app.screen.table.listener_at_cursor()
        await pilot.press("enter")
        assert isinstance(app.screen, ListenerScreen) and app.screen.key == key
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1))
        await pilot.pause()
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        assert app.screen.table.listener_at_cursor() == key


async def test_first_frame_selects_the_top_row(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        app.apply_snapshot(build_snapshot(0))
        await pilot.pause()
        table = app.screen.table
        assert table.cursor_row == 0
        assert table.listener_at_cursor() == app.visible_listeners()[0].key


async def test_bar_stays_on_its_line_through_a_resort_and_enter_opens_what_is_under_it(make_app):
    """htop's rule: rows re-sort under the bar; Enter opens the listener the bar is on now."""
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        assert table.cursor_row == 0
        before = table.listener_at_cursor()
        # postgres starts overflowing: it jumps to the top line, under the bar
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1, swap_order=True))
        await pilot.pause()
        assert table.order[0] == row_key(KEY_PG) != row_key(before)
        assert table.cursor_row == 0 and table.listener_at_cursor() == KEY_PG
        await pilot.press("enter")
        assert isinstance(app.screen, ListenerScreen) and app.screen.key == KEY_PG


async def test_F_makes_the_bar_follow_its_listener_through_a_resort(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        target = row_key(KEY_PG)
        while table.cursor_key() != target:
            await pilot.press("down")
        assert table.cursor_row == 4
        await pilot.press("F")
        assert table.followed == KEY_PG and app.screen.feed.follow_key == KEY_PG
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1, swap_order=True))
        await pilot.pause()
        assert table.order[0] == target
        assert table.cursor_key() == target and table.cursor_row == 0
        assert "following" in screen_text(app)
        await pilot.press("F")  # let go: the bar stays on its line again
        assert table.followed is None and app.screen.feed.follow_key is None
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 2))
        await pilot.pause()
        assert table.cursor_row == 0 and table.cursor_key() != target


async def test_bar_stays_on_its_line_when_a_listener_above_it_goes_away(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        await pilot.press("down", "down", "down")
        below = table.order[4]
        snap = build_snapshot(CLOCK_TICK + 1)
        app.apply_snapshot(replace(snap, listeners=[lst for lst in snap.listeners if lst.key != KEY_8080]))
        await pilot.pause()
        assert row_key(KEY_8080) not in table.order
        assert table.cursor_row == 3 and table.cursor_key() == below


async def test_updates_by_key_touch_only_changed_cells(make_app, monkeypatch):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        calls = []
        original = table.set_cells

        def spy(updates):
            updates = list(updates)
            calls.extend((key, col) for key, col, _ in updates)
            return original(updates)

        monkeypatch.setattr(table, "set_cells", spy)
        monkeypatch.setattr(table, "clear", lambda *a, **k: (_ for _ in ()).throw(AssertionError("clear")))
        snap = build_snapshot(CLOCK_TICK + 1)
        app.apply_snapshot(snap)  # nothing shown changed
        await pilot.pause()
        assert calls == []
        changed = [replace(lst, accept_queue=3) if lst.key == KEY_8080 else lst for lst in snap.listeners]
        app.apply_snapshot(replace(snap, listeners=changed, seq=99))
        await pilot.pause()
        assert calls == [(row_key(KEY_8080), "acceptq")]
        assert str(table.get_cell(row_key(KEY_8080), "acceptq")).startswith("3/5")


async def test_unknown_values_show_as_dash_not_zero(make_app):
    from .fake_source import KEY_REDIS

    app = make_app()
    async with app.run_test(size=(200, 50)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        cell = lambda col: str(table.get_cell(row_key(KEY_REDIS), col)).strip()  # noqa: E731
        for col in ("proc", "overflow_rate", "rtx_rate", "queued_rate", "estab", "close_wait"):
            assert cell(col) == "-", col
        assert cell("drop_rate") == "0" and cell("synq") == "0"  # known zeros stay zeros
        assert cell("acceptq").startswith("0/511")


async def test_netns_filter(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("n")
        picker = app.screen.query_one("#picker")
        ids = [picker.get_option_at_index(i).id for i in range(picker.option_count)]
        for _ in range(ids.index(str(CONTAINER_NS))):
            await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause()
        assert app.netns_filter == CONTAINER_NS
        assert len(order(app)) == 2 and all(k.startswith(str(CONTAINER_NS)) for k in order(app))
        await pilot.press("escape")
        assert len(order(app)) == 6


async def test_pause_freezes_the_table_until_resumed(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("p")
        assert "PAUSED" in screen_text(app)
        snap = build_snapshot(CLOCK_TICK + 1, swap_order=True)
        app.apply_snapshot(snap)
        await pilot.pause()
        assert order(app)[0] == row_key(KEY_8080)
        await pilot.press("p")
        assert order(app)[0] == row_key(KEY_PG)
        assert "PAUSED" not in screen_text(app)


async def test_plus_minus_change_the_source_interval(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("plus")
        assert app.source.interval == 0.5
        await pilot.press("minus", "minus")
        assert app.source.interval == 2.0
        assert "every 2s" in screen_text(app)


async def test_layout_80x24_fits_without_feed(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await feed_ticks(app, pilot)
        # Wait for the settled layout (the table's columns built for 80 columns and the rows
        # in), on a condition with a deadline: a loaded machine may paint a frame before it.
        await wait_for(pilot, lambda: app.screen.table.term_width == 80 and app.screen.table.row_count == 6,
                       what="the table laid out at 80 columns")
        text = await wait_screen(pilot, app, "cols hidden (F2)", "6/5!", size=(80, 24))
        lines = text.splitlines()
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        assert not app.screen.feed.display
        header = lines[2]
        # two netns: NETNS is never hidden; what does not fit is said to be hidden
        for col in ("LISTEN", "NETNS", "PID/COMM", "ACCEPT-Q", "DROP/s", "OVF/s", "CL-WT"):
            assert col in header
        assert "RTX/s" not in header and "cols hidden (F2)" in text
        assert "6/5!" in text  # full queue marked in text, not only colour
        assert sum(1 for line in lines if line.lstrip().startswith(("0.0.0.0", "[::]", "10.", "127."))) == 6
        await pilot.press("f")
        await wait_for(pilot, lambda: app.screen.feed.display, what="the feed shown")


async def test_resize_rebuilds_columns_and_keeps_the_cursor(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("down", "down")
        key = app.screen.table.cursor_key()
        assert "NETNS" in screen_text(app) or "ESTAB" in screen_text(app)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert "ESTAB" not in screen_text(app)
        assert app.screen.table.cursor_key() == key
        await pilot.resize_terminal(200, 50)
        await pilot.pause()
        assert "NETNS" in screen_text(app) and app.screen.feed.display
        assert app.screen.table.cursor_key() == key


async def test_kernel_strings_are_inert(make_app):
    evil = "\x1b[2Jev[bold red]il"
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        snap = build_snapshot(0)
        lst = [replace(x, comm=evil) if x.key == KEY_SSH else x for x in snap.listeners]
        app.apply_snapshot(replace(snap, listeners=lst, hostname="h\x07st"))
        await pilot.pause()
        text = screen_text(app)
        assert "812 \\x1b[2Jev" in text  # cut by the column, but literal
        assert "\x1b" not in text and "\x07" not in text
        assert "h\\x07st" in text
        while app.screen.table.listener_at_cursor() != KEY_SSH:
            await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause()
        assert "pid 812 \\x1b[2Jev[bold red]il" in screen_text(app)


def test_no_color_is_honoured(make_app, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert make_app().no_color is True
    monkeypatch.delenv("NO_COLOR")
    assert make_app().no_color is False


async def test_bpf_badge_states(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        assert "BPF: loading" in screen_text(app)
        app.apply_snapshot(build_snapshot(0, bpf_state="off"))
        await pilot.pause()
        assert "BPF: off: kprobes disabled; tracepoints only" in screen_text(app)
        app.apply_snapshot(build_snapshot(1))
        await pilot.pause()
        assert "BPF: live" in screen_text(app)


async def test_the_sort_column_is_never_hidden(make_app):
    app = make_app(sort="synack_retrans_rate")
    async with app.run_test(size=(80, 24)) as pilot:
        await feed_ticks(app, pilot)
        header = screen_text(app).splitlines()[2]
        assert "RTX/s▼" in header and "NETNS" in header


async def test_column_chooser_picks_the_columns(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed_ticks(app, pilot)
        assert "ESTAB" not in screen_text(app).splitlines()[2]
        await pilot.press("f2")
        assert type(app.screen).__name__ == "ColumnChooser"
        chooser = app.screen.query_one("#picker")
        ids = [chooser.get_option_at_index(i).value for i in range(chooser.option_count)]
        chooser.deselect_all()
        chooser.select("estab")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen) and "estab" in ids
        header = screen_text(app).splitlines()[2]
        assert "ESTAB" in header and "NETNS" in header  # chosen, plus the essentials
        assert "SYN-Q" not in header


async def test_t_toggles_totals_and_rates(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        await pilot.press("t")
        header = screen_text(app).splitlines()[2]
        assert "DROPS" in header and "DROP/s" not in header and "TOTALS (t)" in screen_text(app)
        assert "DROPS since the socket was created, OVF RTX QUEUED since 22:13" in screen_text(app)
        snap = app.snapshot
        lst = next(x for x in snap.listeners if x.key == KEY_8080)
        assert str(table.get_cell(row_key(KEY_8080), "drops")).strip() == str(lst.drops)
        await pilot.press("t")
        assert "DROP/s" in screen_text(app).splitlines()[2]


async def test_last_column_says_how_long_ago_it_last_happened(make_app):
    app = make_app()
    async with app.run_test(size=(200, 50)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        assert str(table.get_cell(row_key(KEY_8080), "last")).strip() == "now ovf"
        assert str(table.get_cell(row_key(KEY_SSH), "last")).strip() == "none"
        snap = build_snapshot(CLOCK_TICK + 20)
        app.apply_snapshot(replace(snap, listeners=[
            replace(lst, drop_rate=0.0, overflow_rate=0.0) if lst.key == KEY_8080 else lst
            for lst in snap.listeners]))
        await pilot.pause()
        assert str(table.get_cell(row_key(KEY_8080), "last")).strip() == "20s ovf"


async def test_notes_and_why_the_feed_is_empty(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        snap = build_snapshot(0, bpf_state="off")
        snap = replace(snap, events=(), sources=replace(snap.sources, notes=("netns 4026532999: cannot enter",)))
        app.apply_snapshot(snap)
        await pilot.pause()
        text = screen_text(app)
        assert "notes: netns 4026532999: cannot enter" in text and "1 note" in text.splitlines()[0]
        assert "no events: the feed needs eBPF" in text
        loading = build_snapshot(1, bpf_state="loading")
        app.apply_snapshot(replace(loading, events=()))
        await pilot.pause()
        assert "eBPF is loading" in screen_text(app) and "notes:" not in screen_text(app)


async def test_pause_freezes_every_number_including_the_netns_line(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("p")
        before = screen_text(app).splitlines()
        snap = build_snapshot(CLOCK_TICK + 1)
        hot = [replace(n, rates={**n.rates, "ListenDrops": 777.0}) for n in snap.netns]
        app.apply_snapshot(replace(snap, netns=hot, listeners=[
            replace(x, drop_rate=555.0) if x.key == KEY_8080 else x for x in snap.listeners]))
        await pilot.pause()
        during = screen_text(app)
        assert "777" not in during and "555" not in during and "PAUSED" in during
        assert during.splitlines()[1] == before[1]
        await pilot.press("p")
        await pilot.pause()
        after = screen_text(app)
        assert "ListenDrops 777/s" in after and "555!" in after


async def test_home_and_end_move_to_the_first_and_last_row(make_app):
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        table = app.screen.table
        await pilot.press("end")
        assert table.cursor_row == table.row_count - 1
        await pilot.press("home")
        assert table.cursor_row == 0


async def test_no_color_alarms_carry_bold_reverse_and_a_marker(make_app, monkeypatch):
    """NO_COLOR (Textual's Monochrome filter): the alarm values stay readable by attribute."""
    from textual.color import Color

    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(sort="overflow_rate")
    assert app.no_color
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        strips = app.screen._compositor.render_strips()
        alarms = []
        for strip in strips:
            segments = list(strip)
            for f in app._filters:
                segments = f.apply(segments, Color(0, 0, 0))
            alarms += [seg for seg in segments if seg.text.strip() == "10.0!"]
        assert len(alarms) >= 2  # DROP/s and OVF/s of 0.0.0.0:8080
        for seg in alarms:
            assert seg.style is not None and seg.style.bold and seg.style.reverse, seg


def test_ascii_mode_is_detected_from_locale_and_terminal():
    from tcptop_q.widgets.text import detect_ascii

    assert detect_ascii({"LANG": "C", "TERM": "xterm-256color"})
    assert detect_ascii({"LANG": "en_US.UTF-8", "TERM": "linux"})
    assert detect_ascii({"LANG": "en_US.UTF-8", "TERM": "vt100"})
    assert not detect_ascii({"LANG": "en_US.UTF-8", "TERM": "xterm-256color"})
    assert not detect_ascii({"LC_ALL": "C.utf8", "TERM": "screen"})
    assert detect_ascii({"LANG": "en_US.UTF-8", "TERM": "xterm", "TCPQ_ASCII": "1"})
    assert not detect_ascii({"LANG": "C", "TERM": "linux", "TCPQ_ASCII": "0"})


async def test_ascii_mode_draws_no_unicode_glyphs_in_the_table(make_app):
    from tcptop_q.widgets import text

    text.set_ascii_mode(True)
    try:
        app = make_app(sort="overflow_rate")
        async with app.run_test(size=(200, 50)) as pilot:
            await feed_ticks(app, pilot)
            shown = screen_text(app)
            assert "OVF/sv" in shown and "6/5 #####!" in shown and "->" in shown
            table_lines = [line for line in shown.splitlines()[2:10]]
            assert not any(ch in line for line in table_lines for ch in "█░▼▲…│╭╮→▁▂▃▄▅▆▇")
    finally:
        text.set_ascii_mode(None)


async def test_a_resort_of_the_same_tick_keeps_every_cell_and_the_next_tick_redraws(make_app):
    """A re-sort re-applies the tick on screen: its cells stand (no value is recomputed);
    the next tick, and a tick that came while paused, are drawn again."""
    app = make_app()
    async with app.run_test(size=(160, 48)) as pilot:
        await feed_ticks(app, pilot)
        await pilot.press("t")  # totals: DROPS moves every tick (the rates here do not)
        table = app.screen.table
        cells = {k: dict(table._data[table._rk[k]]) for k in table.order}
        order = list(table.order)
        await pilot.press("r")
        assert table.order == order[::-1]
        assert all(table._data[table._rk[k]][c] is cell for k, row in cells.items() for c, cell in row.items())
        drops = 120 + 10 * (CLOCK_TICK + 1)  # fake_source: seed experiment's sk_drops
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 1))
        await wait_for(pilot, lambda: str(table.get_cell(row_key(KEY_8080), "drops")).strip() == str(drops),
                       what="the new tick's DROPS")
        await pilot.press("p")
        app.apply_snapshot(build_snapshot(CLOCK_TICK + 2))
        await pilot.press("r")  # paused: the frozen tick stays on screen
        assert str(table.get_cell(row_key(KEY_8080), "drops")).strip() == str(drops)
        await pilot.press("p")
        await wait_for(pilot, lambda: str(table.get_cell(row_key(KEY_8080), "drops")).strip() == str(drops + 10),
                       what="the held tick after the pause")
