"""The main screen: header, listener table, live feed, status line."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static

from tcptop_q import lifecycle
from tcptop_q.model import Snapshot, Transition
from tcptop_q.screens import keys as keycat
from tcptop_q.widgets.feed import FeedPane
from tcptop_q.widgets.footer import KeyFooter
from tcptop_q.widgets.listener_table import COLUMN_BY_ID, COLUMNS, TOTALS, ListenerTable
from tcptop_q.widgets.text import ascii_mode, inert, netns_label, netns_names
from tcptop_q.widgets.topbar import TopBar

if TYPE_CHECKING:
    from tcptop_q.app import TcpqTopApp

WIDE = 120  # below this the feed is hidden unless asked for, and columns drop out

SORT_LABELS = {c.sort_key: c.label for c in (*COLUMNS, *TOTALS.values()) if c.sort_key}
SORT_LABELS["severity"] = "what is wrong now"


class MainScreen(Screen):
    BINDINGS = keycat.bindings("main")
    KEY_SCOPES = ("main",)

    def __init__(self) -> None:
        super().__init__()
        self.feed_wanted: bool | None = None  # None: follow the terminal width
        self._applied_seq: int | None = None

    @property
    def tapp(self) -> TcpqTopApp:
        return cast("TcpqTopApp", self.app)

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        with Horizontal(id="body"):
            yield ListenerTable(id="listeners")
            yield FeedPane(id="feed")
        yield Static(id="status")
        yield Static(id="notes")
        yield Input(id="filter", placeholder="filter: port, address, comm or pid (enter: keep, esc: clear)")
        yield KeyFooter()

    @property
    def table(self) -> ListenerTable:
        return self.query_one("#listeners", ListenerTable)

    @property
    def feed(self) -> FeedPane:
        return self.query_one("#feed", FeedPane)

    def _extras(self, key):
        """(last overflow/drop as (kind, age bucket), fill sparkline) for the table's LAST and
        FILL columns; ages in whole seconds under a minute, whole minutes after."""
        hist = self.tapp.history
        ovf, drop = hist.last_event(key)
        event = None
        if ovf is not None or drop is not None:
            kind, when = ("ovf", ovf) if (ovf or 0) >= (drop or 0) else ("drp", drop)
            age = max(0.0, self._now - (when or 0.0))
            event = (kind, int(age) if age < 60 else int(age // 60) * 60)
        return (event,), hist.spark(key)

    def on_mount(self) -> None:
        self._now = 0.0
        self.table.extras = self._extras
        self.query_one("#filter", Input).display = False
        self.query_one("#filter", Input).value = self.tapp.filter_text
        self._layout_for(self.app.size.width)
        self._mark_sort()
        self.table.focus()
        self.refresh_header()
        self._refresh_status()
        if self.tapp.snapshot is not None:
            self.apply_snapshot(self.tapp.snapshot, ())

    def on_screen_resume(self) -> None:
        """Back from a detail screen: paint the rows as they were first (the key answers at
        once), then catch up on the ticks that came meanwhile, after that frame
        (bench/key_screens.py, docs/BENCHMARKS.md)."""
        snap = self.tapp.snapshot
        if snap is not None and snap.seq != self._applied_seq:
            self.refresh_header()
            self.call_after_refresh(self._catch_up)

    def _catch_up(self) -> None:
        snap = self.tapp.snapshot
        if snap is not None and snap.seq != self._applied_seq and self.is_current:
            self.apply_snapshot(snap, ())

    # ------------------------------------------------------------ layout
    def on_resize(self, event: events.Resize) -> None:
        self._layout_for(event.size.width)

    def _layout_for(self, width: int) -> None:
        narrow = width < WIDE
        self.set_class(narrow, "narrow")
        show_feed = (not narrow) if self.feed_wanted is None else self.feed_wanted
        self.feed.display = show_feed

    # ------------------------------------------------------------ data
    def apply_snapshot(self, snap: Snapshot, events: Sequence[Transition]) -> None:
        self._applied_seq = snap.seq
        self.refresh_header()
        self._apply_rows()
        self.feed.push(events, snap.sources.lost_events)
        self.feed.explain(snap)
        self._show_notes(snap)

    def _show_notes(self, snap: Snapshot) -> None:
        """sources.notes (netns it could not read, owners unknown, feed paused): one line."""
        notes = self.query_one("#notes", Static)
        notes.display = bool(snap.sources.notes)
        if snap.sources.notes:
            text = Text(no_wrap=True, overflow="ellipsis")
            text.append("notes: ", style="bold")
            text.append(" · ".join(inert(n) for n in snap.sources.notes))
            notes.update(text)

    def background_snapshot(self, snap: Snapshot, events: Sequence[Transition]) -> None:
        self.feed.push(events, snap.sources.lost_events)

    def _apply_rows(self) -> None:
        # 10k rows allocate ~100k objects: the cyclic GC waits until they are in place (as for
        # a tick, TcpqTopApp.apply_snapshot), also for a re-sort, `t` or the catch-up on resume.
        with lifecycle.gc_held():
            self._apply_rows_now()

    def _apply_rows_now(self) -> None:
        app = self.tapp
        snap = app.snapshot
        self._now = snap.time if snap is not None else 0.0
        listeners = app.visible_listeners()
        self.table.configure(required=self._required(listeners))
        self.table.apply(listeners, netns_names(snap.netns) if snap is not None else None,
                         epoch=None if snap is None else (snap.seq, app.ticks_applied))
        self._refresh_status(len(listeners))

    def refresh_header(self) -> None:
        app = self.tapp
        self.query_one(TopBar).show(
            app.snapshot, interval=float(app.source.interval), now=app.clock(), paused=app.paused,
            mode=app.mode_badge(), replaying=app.replaying
        )

    def _refresh_status(self, shown: int | None = None) -> None:
        app = self.tapp
        total = len(app.snapshot.listeners) if app.snapshot else 0
        shown = self.table.row_count if shown is None else shown
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f"{shown}/{total} listeners", style="bold")
        if self.table.hidden:
            text.append(f" │ +{len(self.table.hidden)} cols hidden (F2)", style="reverse")
        if self.table.totals:
            since = app.bpf_live_since
            start = time.strftime("%H:%M", time.localtime(since)) if since is not None else "eBPF live"
            text.append(f" │ TOTALS (t): DROPS since the socket was created, OVF RTX QUEUED since {start}",
                        style="reverse")
        arrow = ("^" if app.sort_reverse else "v") if ascii_mode() else ("▲" if app.sort_reverse else "▼")
        text.append(f" │ sort {SORT_LABELS.get(app.sort_key, app.sort_key)} {arrow}")
        if app.filter_text:
            text.append(" │ filter ")
            text.append(inert(app.filter_text), style="reverse")
        if app.netns_filter is not None:
            names = netns_names(app.snapshot.netns) if app.snapshot else {}
            text.append(f" │ netns {netns_label(app.netns_filter, names.get(app.netns_filter))}", style="reverse")
        if self.table.followed is not None:
            text.append(" │ following ", style="bold")
            text.append(inert(self.table.followed.label()), style="reverse")
        elif self.feed.follow_key is not None:
            text.append(f" │ feed: {self.feed.follow_key.label()}")
        if app.connections_time is not None:
            text.append(
                f" │ children dump {max(0.0, app.clock() - app.connections_time):.0f}s ago", style="dim"
            )
        if app.collector_error:
            text.append(f" │ {inert(app.collector_error)}", style="red")
        self.query_one("#status", Static).update(text)

    def _required(self, listeners) -> frozenset[str]:
        """Never hide the sort column, nor NETNS when the rows come from several netns."""
        need = set()
        for col in (*COLUMNS, *TOTALS.values()):
            if col.sort_key == self.tapp.sort_key:
                need.add(col.id)
        if len({lst.key.netns for lst in listeners}) > 1:
            need.add("netns")
        return frozenset(need)

    def action_toggle_totals(self) -> None:
        self.table.configure(totals=not self.table.totals)
        self._mark_sort()
        self._apply_rows()
        self.notify("totals since start (DROPS: since the socket was created)" if self.table.totals
                    else "rates per second", timeout=2)

    def action_choose_columns(self) -> None:
        from tcptop_q.screens.modals import ColumnChooser

        def picked(choice: frozenset[str] | None) -> None:
            if choice is None:
                return
            self.table.configure(chosen=choice if choice else None)
            self._mark_sort()
            self._apply_rows()

        shown = {c.id for c in self.table.cols}
        self.app.push_screen(ColumnChooser(shown), picked)

    def _mark_sort(self) -> None:
        self.table.mark_sort(self.tapp.sort_key, self.tapp.sort_reverse)

    def resort(self) -> None:
        self._mark_sort()
        self._apply_rows()

    # ------------------------------------------------------------ actions
    def action_pick_sort(self) -> None:
        from tcptop_q.screens.modals import SortPicker

        def picked(key: str | None) -> None:
            if key:
                self.tapp.sort_key = key
                self.resort()

        self.app.push_screen(SortPicker(self.tapp.sort_key), picked)

    def action_reverse(self) -> None:
        self.tapp.sort_reverse = not self.tapp.sort_reverse
        self.resort()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if self.tapp.filter_text or box.display:
            box.value = ""
            self._set_filter("")
            box.display = False
            self.table.focus()
        elif self.tapp.netns_filter is not None:
            self.tapp.netns_filter = None
            self._apply_rows()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self._set_filter(event.value)

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.query_one("#filter", Input).display = False  # the status line shows the filter
        self.table.focus()

    def _set_filter(self, text: str) -> None:
        self.tapp.filter_text = text.strip()
        self._apply_rows()
        self.feed.set_terms(tuple(self.tapp.filter_text.lower().split()))

    def action_pick_netns(self) -> None:
        from tcptop_q.screens.modals import NetnsPicker

        def picked(choice: int | None) -> None:
            if choice is None:
                return
            self.tapp.netns_filter = None if choice == 0 else choice
            self._apply_rows()

        self.app.push_screen(NetnsPicker(self.tapp.snapshot, self.tapp.netns_filter), picked)

    def action_toggle_feed(self) -> None:
        self.feed_wanted = not self.feed.display
        self.feed.display = self.feed_wanted
        if not self.feed.display and self.feed.table.has_focus:
            self.table.focus()

    def action_feed_follow(self) -> None:
        """htop's F: the bar follows the selected listener through re-sorts, and the feed shows
        only its events; F again lets go (the bar then stays on its line)."""
        key = None if self.table.followed is not None else self.table.listener_at_cursor()
        self.table.followed = key
        self.feed.set_follow(key)
        if key is not None and not self.feed.display:
            self.action_toggle_feed()
        self._refresh_status()

    def action_feed_pause(self) -> None:
        self.feed.set_paused(not self.feed.paused)

    def action_focus_other(self) -> None:
        if self.table.has_focus and self.feed.display:
            self.feed.table.focus()
        else:
            self.table.focus()

    def action_drill(self) -> None:
        if self.feed.table.has_focus:
            self._open_feed_line()
        else:
            key = self.table.listener_at_cursor()
            if key is not None:
                self.tapp.open_listener(key)

    @on(DataTable.RowSelected, "#listeners")
    def _listener_selected(self, event: DataTable.RowSelected) -> None:
        key = self.table.keys.get(str(event.row_key.value))
        if key is not None:
            self.tapp.open_listener(key)

    @on(DataTable.RowSelected, "#feed-table")
    def _feed_selected(self, event: DataTable.RowSelected) -> None:
        self._open_feed_line()

    def _open_feed_line(self) -> None:
        from tcptop_q.uimodel import SocketRef

        ev = self.feed.selected()
        if ev is None:
            return
        if ev.new == "LISTEN" or ev.rport == 0:  # a listening socket: open the listener itself
            snap = self.tapp.snapshot
            key = next((lst.key for lst in (snap.listeners if snap else ())
                        if (lst.key.netns, lst.key.lport, lst.key.laddr) == (ev.netns, ev.lport, ev.laddr)), None)
            if key is not None:
                self.tapp.open_listener(key)
                return
        self.tapp.open_socket(SocketRef(ev.netns, ev.family, ev.laddr, ev.lport, ev.raddr, ev.rport))


__all__ = ["MainScreen", "COLUMN_BY_ID"]
