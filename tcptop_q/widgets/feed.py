"""The live feed of state transitions, flushed to the screen at most 10 times a second."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tcptop_q.model import ListenerKey, Snapshot, Transition
from tcptop_q.widgets.keyed_table import KeyedTable
from tcptop_q.widgets.text import ascii_mode, inert

FEED_ROWS = 300  # rows kept on screen
FEED_KEEP = 2000  # events kept for re-filtering
FLUSH_HZ = 10

SHORT_STATE = {
    "ESTABLISHED": "ESTAB",
    "SYN_SENT": "SYN-SENT",
    "SYN_RECV": "SYN-RECV",
    "NEW_SYN_RECV": "NEW-SYN",
    "FIN_WAIT1": "FIN-W1",
    "FIN_WAIT2": "FIN-W2",
    "TIME_WAIT": "TIME-W",
    "CLOSE_WAIT": "CLOSE-WAIT",
    "LAST_ACK": "LAST-ACK",
}
STATE_STYLE = {"CLOSE_WAIT": "yellow", "CLOSE": "dim", "ESTABLISHED": "green", "SYN_RECV": "cyan"}


def matches(ev: Transition, key: ListenerKey | None) -> bool:
    """Whether the feed following `key` (None: all) shows `ev`: the sampler decided whose it is."""
    return key is None or ev.listener == key


def event_matches(ev: Transition, terms: tuple[str, ...]) -> bool:
    if not terms:
        return True
    hay = f"{ev.laddr}:{ev.lport} {ev.raddr}:{ev.rport} {ev.comm} {ev.pid}".lower()
    return all(term == str(ev.lport) or term in hay for term in terms)


def event_text(ev: Transition) -> Text:
    """Port and transition first: the feed pane is narrow and cuts the end."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{ev.lport:>5} ", style="bold")
    if ev.kind == "accept":
        peer = f"[{ev.raddr}]" if ev.family == "ipv6" else ev.raddr
        text.append("accept", style="bold")
        text.append(f" {inert(peer)}:{ev.rport}")
        if ev.ms_in_old is not None:
            text.append(f" waited {ev.ms_in_old:.1f}ms", style="dim")
        text.append(f" pid {ev.pid} {inert(ev.comm)}", style="dim")
        return text
    text.append(SHORT_STATE.get(ev.old, ev.old), style=STATE_STYLE.get(ev.old, ""))
    text.append("->" if ascii_mode() else "→")
    text.append(SHORT_STATE.get(ev.new, ev.new), style=STATE_STYLE.get(ev.new, ""))
    peer = f"[{ev.raddr}]" if ev.family == "ipv6" else ev.raddr
    text.append(f" {inert(peer)}:{ev.rport}")
    if ev.ms_in_old is not None:
        text.append(f" {ev.ms_in_old:.1f}ms", style="dim")
    text.append(f" {inert(ev.comm)}", style="dim")
    return text


class FeedPane(Vertical):
    """Table of recent transitions; push() buffers, a 10 Hz timer flushes."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.events: deque[tuple[int, Transition]] = deque(maxlen=FEED_KEEP)
        self.pending: deque[tuple[int, Transition]] = deque(maxlen=FEED_ROWS)
        self.by_key: dict[str, Transition] = {}
        self.seq = 0
        self.received = 0
        self.lost = 0
        self.paused = False
        self.follow_key: ListenerKey | None = None
        self.terms: tuple[str, ...] = ()  # the main table's `/` filter, applied to events too
        self.flushes = 0
        self._dirty_title = True
        self.empty_reason = "waiting for the first sample…"

    def compose(self) -> ComposeResult:
        yield Static(self.empty_reason, id="feed-empty")
        table = KeyedTable(id="feed-table", show_header=False)
        table.add_column("time", width=8, key="time")
        table.add_column("event", width=64, key="event")
        yield table

    def on_mount(self) -> None:
        self.set_interval(1 / FLUSH_HZ, self.flush, name="feed-flush")
        self._update_title()

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#feed-table", KeyedTable)

    def push(self, events: Iterable[Transition], lost: int) -> None:
        for ev in events:
            self.seq += 1
            self.received += 1
            item = (self.seq, ev)
            self.events.append(item)
            if self._wanted(ev):
                self.pending.append(item)
        if lost != self.lost:
            self.lost = lost
            self._dirty_title = True

    def explain(self, snap: Snapshot) -> None:
        """Say why the feed is empty (or stopped): it needs eBPF, eBPF is loading, or the
        source paused it over a transition rate."""
        src = snap.sources
        paused = next((n for n in src.notes if n.startswith("feed paused")), None)
        if src.bpf_state == "loading":
            reason = "no events yet: eBPF is loading (compiling the probes)"
        elif not src.bpf:
            reason = f"no events: the feed needs eBPF ({inert(src.bpf_error) if src.bpf_error else 'not loaded'})"
        elif paused is not None:
            reason = inert(paused)
        elif self.follow_key is not None:
            reason = f"no transitions of {self.follow_key.label()} yet"
        else:
            reason = "no transitions yet: eBPF is live, no socket changed state"
        if reason != self.empty_reason:
            self.empty_reason = reason
            self.query_one("#feed-empty", Static).update(reason)
        self._show_empty()

    def _show_empty(self) -> None:
        paused = self.empty_reason.startswith("feed paused")
        self.query_one("#feed-empty", Static).display = paused or self.table.row_count == 0

    def _wanted(self, ev: Transition) -> bool:
        return matches(ev, self.follow_key) and event_matches(ev, self.terms)

    def set_terms(self, terms: tuple[str, ...]) -> None:
        """The `/` filter: every term matches the port, an address or the comm."""
        if terms != self.terms:
            self.terms = terms
            self.set_follow(self.follow_key)

    def set_follow(self, key: ListenerKey | None) -> None:
        """Show only `key`'s events (None: all); re-filters what is kept."""
        self.follow_key = key
        self.table.clear_rows()
        self.by_key.clear()
        self.pending.clear()
        self.pending.extend(item for item in self.events if self._wanted(item[1]))
        self._dirty_title = True
        self.flush()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._dirty_title = True
        self._update_title()

    def flush(self) -> None:
        if self._dirty_title:
            self._update_title()
        if self.paused or not self.pending:
            return
        self.flushes += 1
        table = self.table
        following = table.cursor_row >= table.row_count - 1
        items = list(self.pending)
        self.pending.clear()
        for seq, ev in items:
            key = str(seq)
            self.by_key[key] = ev
            when = Text(time.strftime("%H:%M:%S", time.localtime(ev.time)), style="dim")
            table.add_keyed_row(key, [when, event_text(ev)])
        excess = table.row_count - FEED_ROWS
        if excess > 0:
            old = table.order[:excess]
            table.remove_keys(old)
            for k in old:
                self.by_key.pop(k, None)
        if following and table.row_count:
            table.move_cursor(row=table.row_count - 1, animate=False)
        self._dirty_title = True
        self._show_empty()

    def selected(self) -> Transition | None:
        key = self.table.cursor_key()
        return self.by_key.get(key) if key else None

    def _update_title(self) -> None:
        self._dirty_title = False
        parts = ["feed"]
        if self.terms:
            parts.append("filter " + " ".join(self.terms))
        if self.follow_key is not None:
            parts.append(f"only {self.follow_key.label()}")
        parts.append(f"{self.received} ev")
        if self.lost:
            parts.append(f"lost {self.lost}")
        if self.paused:
            parts.append("PAUSED")
        self.border_title = " · ".join(parts)
        self.set_class(bool(self.lost), "-lost")
