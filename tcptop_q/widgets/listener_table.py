"""The main listener table: one row per listening socket, updated by key."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.cache import LRUCache
from textual.widgets.data_table import ColumnKey

from tcptop_q.model import Listener, ListenerKey
from tcptop_q.widgets.keyed_table import KeyedTable
from tcptop_q.widgets.text import ascii_mode, fmt_age, fmt_num, fmt_wait, inert, netns_label


@dataclass(frozen=True)
class Col:
    id: str
    label: str
    width: int
    priority: int  # lower is kept first when the table is narrow
    sort_key: str | None  # model.SORT_KEYS entry this column sorts by
    right: bool = True


COLUMNS: tuple[Col, ...] = (
    Col("addr", "LISTEN", 20, 0, "lport", right=False),
    Col("netns", "NETNS", 12, 9, "netns"),
    Col("proc", "PID/COMM", 14, 0, "pid", right=False),
    Col("acceptq", "ACCEPT-Q", 9, 0, "fill", right=False),
    Col("synq", "SYN-Q", 5, 2, "syn_queue"),
    Col("drop_rate", "DROP/s", 6, 0, "drop_rate"),
    Col("overflow_rate", "OVF/s", 6, 0, "overflow_rate"),
    Col("rtx_rate", "RTX/s", 6, 6, "synack_retrans_rate"),
    Col("queued_rate", "QUE/s", 6, 4, "queued_rate"),
    Col("accepted_rate", "ACC/s", 6, 7, "accepted_rate"),
    Col("wait_p99", "WAIT99", 6, 8, "accept_wait_p99"),
    Col("estab", "ESTAB", 5, 5, "established"),
    Col("close_wait", "CL-WT", 5, 1, "close_wait"),
    Col("peak", "PEAK", 5, 7, "peak_accept_queue"),
    Col("last", "LAST", 9, 2, None),
    Col("spark", "FILL 1m", 10, 8, None, right=False),
)
# `t` shows totals instead of rates: each rate column's total, with where it starts in the legend.
TOTALS: dict[str, Col] = {
    "drop_rate": Col("drops", "DROPS", 8, 0, "drops"),
    "overflow_rate": Col("overflows", "OVF", 7, 0, "overflows"),
    "rtx_rate": Col("rtx", "RTX", 6, 6, "synack_retrans"),
    "queued_rate": Col("queued", "QUEUED", 7, 4, "queued"),
}
COLUMN_BY_ID = {c.id: c for c in (*COLUMNS, *TOTALS.values())}

# What every number on screen means (the `?` screen shows it; docs/JSON.md has the details).
LEGEND: tuple[tuple[str, str], ...] = (
    ("LISTEN", "local address:port; ⧉ SO_REUSEPORT member"),
    ("NETNS", "netns name, else its inode's last 4 digits"),
    ("PID/COMM", "fd's process (-: not visible; +N: others)"),
    ("ACCEPT-Q", "children waiting for accept() / limit; the kernel holds limit+1, ! = full"),
    ("SYN-Q", "handshakes in progress (request socks) for this listener"),
    ("DROP/s", "this socket's sk_drops per second (SYNs and ACKs it dropped)"),
    ("OVF/s", "accept-queue overflows per second (eBPF; - without it)"),
    ("RTX/s", "SYN-ACK retransmits per second (eBPF)"),
    ("QUE/s", "children that entered the accept queue per second (not accept() calls)"),
    ("ACC/s", "accept() calls per second (eBPF)"),
    ("WAIT99", "p99 accept-queue wait, last few s; · none"),
    ("ESTAB", "ESTABLISHED children (queued or accepted)"),
    ("CL-WT", "CLOSE_WAIT children: the peer closed first"),
    ("PEAK", "highest accept-queue depth between two samples (eBPF)"),
    ("LAST", "time since the last overflow (ovf) or drop (drp) seen; none: none since tcpq-top started"),
    ("FILL 1m", "accept-queue fill over the last minute, one cell per 6 s (the cell's highest)"),
    ("t: DROPS", "sk_drops since the socket was created (the kernel's own total)"),
    ("t: OVF RTX QUEUED", "totals since eBPF went live (the listener screen says when)"),
    ("header ListenOverflows", "the netns' TcpExt counter, per second: every listener of the netns"),
    ("header ListenDrops", "the netns' TcpExt counter, per second: counted with each listener's sk_drops"),
    ("-", "cannot be known here (no eBPF, no permission): never shown as 0"),
)
NETNS_MIN = 5  # "…1234": short_netns()
BAR = 5  # fill-bar cells; shown when the table has room (priority 3)
BAR_PRIORITY = 3
PADDING = 2  # DataTable cell_padding 1 on each side
SCROLLBAR = 1
LISTEN_MIN = 12  # "0.0.0.0:8080"


def row_key(key: ListenerKey) -> str:
    return f"{key.netns}|{key.family}|{key.laddr}|{key.lport}|{key.cookie}"


def columns_for_width(
    width: int,
    required: frozenset[str] = frozenset(),
    totals: bool = False,
    chosen: frozenset[str] | None = None,
    netns_width: int = NETNS_MIN,
) -> tuple[list[Col], int, list[Col]]:
    """(columns shown in display order, fill-bar width, columns hidden for lack of room).

    `required` columns (the sort column, NETNS with several netns) are kept like the
    essentials; `chosen` (the F2 column chooser) replaces the automatic set: exactly those,
    plus the essentials. With `totals` each rate column shows its total instead."""
    cols = [TOTALS.get(c.id, c) if totals else c for c in COLUMNS]
    # NETNS is as wide as its widest name (up to its Col width): inodes alone need NETNS_MIN.
    cols = [replace(c, width=min(c.width, netns_width)) if c.id == "netns" else c for c in cols]
    if chosen is not None:
        required = required | chosen
        cols = [c for c in cols if c.priority == 0 or c.id in required or _base_id(c) in required]
    budget = width - SCROLLBAR
    keep: set[str] = set()
    bar = 0
    items = [(-1 if c.priority == 0 or c.id in required or _base_id(c) in required else c.priority, i, c)
             for i, c in enumerate(cols)] + [(BAR_PRIORITY, -1, None)]
    for prio, _, col in sorted(items, key=lambda t: (t[0], t[1])):
        need = BAR + 2 if col is None else col.width + PADDING
        if need > budget:
            if col is not None and prio < 0:  # never drop the essentials
                keep.add(col.id)
                budget -= need
            continue
        budget -= need
        if col is None:
            bar = BAR
        else:
            keep.add(col.id)
    shown = [c for c in cols if c.id in keep]
    hidden = [c for c in cols if c.id not in keep]
    if budget < 0:  # forced columns did not fit: LISTEN gives up cells (it ends in an ellipsis)
        shown = [replace(c, width=max(LISTEN_MIN, c.width + budget)) if c.id == "addr" else c for c in shown]
    return shown, bar, hidden


def _base_id(col: Col) -> str:
    """The rate column a total column stands in for (drops -> drop_rate)."""
    for rate_id, total in TOTALS.items():
        if total.id == col.id:
            return rate_id
    return col.id


def fill_style(depth: int, limit: int) -> str:
    if depth > limit:  # sk_acceptq_is_full: the kernel holds backlog+1
        return "queue-full"
    if limit and depth * 2 >= limit:
        return "queue-high"
    return "queue-ok" if depth else "queue-idle"


FILL_STYLES = {  # tcss cannot style text inside a cell; these are the only colours in Python
    "queue-full": "bold red",
    "queue-high": "yellow",
    "queue-ok": "green",
    "queue-idle": "",
}


def accept_cell(depth: int, limit: int, bar: int) -> Text:
    style = FILL_STYLES[fill_style(depth, limit)]
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{depth}/{limit}", style=style)
    if bar:
        cap = limit + 1
        filled = min(bar, round(bar * depth / cap)) if cap else 0
        if depth and not filled:
            filled = 1
        full, empty = ("#", ".") if ascii_mode() else ("█", "░")
        text.append(" ")
        text.append(full * filled, style=style)
        text.append(empty * (bar - filled), style="dim")
        if depth > limit:
            text.append("!", style=style)
    elif depth > limit:
        text.append("!", style=style)
    return text


ALARM = "bold reverse red"  # never only a colour: bold+reverse survive NO_COLOR, and a "!" marks it


def _rate(value: float | None, hot: str = ALARM) -> Text:
    text = Text(fmt_num(value), style=hot if value else "", justify="right", no_wrap=True)
    if value and hot == ALARM:
        text.append("!")
    return text


def _count(value: int | None) -> Text:
    return Text("-" if value is None else str(value), justify="right", no_wrap=True)


NO_EXTRAS: tuple[Any, Any] = ((None, None), ())


def raw_values(lst: Listener, extras: tuple[Any, Any] = NO_EXTRAS, netns_name: str | None = None) -> tuple:
    """Everything the row shows, as plain values: compared tick to tick to find changed cells.

    `extras` is what only the app's history knows: ((last overflow, last drop) as an age
    bucket, the fill sparkline levels). `netns_name`: the NETNS column's name, if any."""
    return (
        (lst.key.label(), lst.reuseport_group is not None),
        (lst.key.netns, netns_name),
        (lst.pid, lst.comm, len(lst.holders or ())),
        (lst.accept_queue, lst.backlog),
        lst.syn_queue,
        lst.drop_rate,
        lst.overflow_rate,
        lst.synack_retrans_rate,
        lst.queued_rate,
        lst.accepted_rate,
        None if lst.accept_wait_recent is None else (lst.accept_wait_recent.count, lst.accept_wait_recent.p99_s),
        # an empty children mapping means "not counted", a missing state in a counted one is 0
        lst.children.get("ESTABLISHED", 0 if lst.children else None),
        lst.children.get("CLOSE_WAIT", 0 if lst.children else None),
        lst.peak_accept_queue,
        extras[0],
        extras[1],
        lst.drops,
        lst.overflows,
        lst.synack_retrans,
        lst.queued,
    )


RAW_INDEX = {c.id: i for i, c in enumerate((*COLUMNS, *TOTALS.values()))}
SPARK_GLYPHS = " ▁▂▃▄▅▆▇█"
SPARK_ASCII = " .:-=+*#@"


def age_text(seconds: float) -> str:
    return fmt_age(seconds) if seconds >= 1 else "now"


def last_cell(raw: tuple[tuple[str, float] | None, ...]) -> Text:
    """raw: ((kind, age in whole seconds) of the most recent event) or (None,)."""
    event = raw[0] if raw else None
    if event is None:
        return Text("none", style="dim", justify="right", no_wrap=True)
    kind, age = event
    hot = age < 10
    return Text(f"{age_text(age)} {kind}", style="bold" if hot else "", justify="right", no_wrap=True)


def spark_cell(levels: tuple[int, ...]) -> Text:
    if not levels:
        return Text("-", style="dim", no_wrap=True)
    glyphs = SPARK_ASCII if ascii_mode() else SPARK_GLYPHS
    text = Text(no_wrap=True)
    for level in levels:
        text.append(glyphs[level], style=ALARM if level == 8 else "")
    return text


def render_cell(col_id: str, raw: Any, bar: int) -> Text:
    if col_id == "addr":
        label, in_group = raw
        text = Text(no_wrap=True, overflow="ellipsis")
        if in_group:  # a SO_REUSEPORT member: the listener screen shows its group
            text.append("=" if ascii_mode() else "⧉", style="cyan")
        text.append(inert(label))
        return text
    if col_id == "netns":
        return Text(netns_label(raw[0], raw[1], COLUMN_BY_ID["netns"].width), style="dim", no_wrap=True)
    if col_id == "proc":
        pid, comm, holders = raw
        if pid is None:
            return Text("-", style="dim")
        text = Text(str(pid), no_wrap=True, overflow="ellipsis")
        if holders > 1:  # held by more processes than the one named (pre-fork workers, a hand-over)
            text.append(f"+{holders - 1}", style="cyan")
        text.append(" " + inert(comm, "?"), style="bold")
        return text
    if col_id == "acceptq":
        return accept_cell(raw[0], raw[1], bar)
    if col_id in ("drop_rate", "overflow_rate"):
        return _rate(raw)
    if col_id in ("rtx_rate",):
        return _rate(raw, hot="bold yellow")
    if col_id in ("queued_rate", "accepted_rate"):
        return _rate(raw, hot="")
    if col_id == "wait_p99":
        if raw is None:
            return Text("-", justify="right", no_wrap=True)
        count, p99 = raw
        if not count:  # nothing accepted in the window (a queue nobody drains shows in the diagnosis)
            return Text("." if ascii_mode() else "·", style="dim", justify="right", no_wrap=True)
        return Text(fmt_wait(p99), style="yellow" if p99 and p99 >= 0.1 else "", justify="right", no_wrap=True)
    if col_id == "last":
        return last_cell(raw)
    if col_id == "spark":
        return spark_cell(raw)
    if col_id in ("drops", "overflows", "rtx", "queued"):
        return _count(raw)
    if col_id == "close_wait":
        return Text("-" if raw is None else str(raw), justify="right", style="yellow" if raw else "")
    return _count(raw)


class LazyCell:
    """A cell that builds its Text only when DataTable renders it (visible rows only).

    With 10k listeners a tick may change 100k cells; building Rich Text for each costs
    more than the whole rest of the tick, and all but ~50 rows are off screen.
    """

    __slots__ = ("col", "raw", "bar", "_text")

    def __init__(self, col: str, raw: Any, bar: int) -> None:
        self.col, self.raw, self.bar = col, raw, bar
        self._text: Text | None = None

    def __rich__(self) -> Text:
        if self._text is None:
            self._text = render_cell(self.col, self.raw, self.bar)
        return self._text

    def __str__(self) -> str:
        return self.__rich__().plain


class ListenerTable(KeyedTable):
    """Rows keyed by ListenerKey; `apply()` edits only what changed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cells_drawn: LRUCache[tuple, Any] = LRUCache(4000)  # see _render_cell
        self.keys: dict[str, ListenerKey] = {}
        self._raw: dict[str, tuple] = {}
        self._shown: dict[str, Listener] = {}  # row key -> the Listener its cells were built from
        self._epoch: object = None
        self.cols: list[Col] = []
        self.bar = 0
        self.term_width = 0
        self.last: Sequence[Listener] | None = None
        self.netns_names: Mapping[int, str] = {}
        self.netns_width = NETNS_MIN  # the NETNS column fits the longest name shown (widgets/text.py netns_label)
        self.sort_mark: tuple[str, bool] = ("overflow_rate", False)
        # htop's rule: the bar stays on its screen line while rows re-sort under it; with a
        # followed listener (F) the bar moves with that listener instead.
        self.followed: ListenerKey | None = None
        self.required: frozenset[str] = frozenset()  # the sort column; NETNS with several netns
        self.totals = False  # `t`: totals instead of rates
        self.chosen: frozenset[str] | None = None  # F2 column chooser; None: fit to the width
        self.hidden: list[Col] = []  # columns left out for lack of room
        # What only the app's history knows, per listener: ((kind, age) of the last overflow
        # or drop, fill sparkline levels). Set by the main screen.
        self.extras: Callable[[ListenerKey], tuple[Any, Any]] | None = None

    def on_resize(self, event) -> None:
        self.setup_columns(event.size.width)

    # ------------------------------------------------------------ painting
    # DataTable keys its cell-render cache on a table-wide update counter, so every tick
    # re-rendered every visible cell (~40 rows x 16 columns of Rich layout, most of a tick's
    # paint). A cell here is replaced, never edited in place (apply() builds a new LazyCell
    # for a changed value), so the cell object itself tells whether its rendering still
    # holds; the row index stays in the key because DataTable puts it in the segments' meta.
    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False):
        if row_index < 0 or column_index < 0:  # header and row labels: DataTable's own cache
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        if row_key is None or column_key is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        cell = self._data[row_key].get(column_key)
        if not isinstance(cell, LazyCell):  # only LazyCells are known to be replaced, never edited
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        key = (cell, row_index, column_index, base_style, width, cursor, hover, self._show_hover_cursor,
               self.show_cursor, self._pseudo_class_state)
        lines = self._cells_drawn.get(key)
        if lines is None:
            lines = self._cells_drawn[key] = super()._render_cell(
                row_index, column_index, base_style, width, cursor, hover)
        return lines

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._cells_drawn.clear()

    def notify_style_update(self) -> None:
        self._cells_drawn.clear()
        super().notify_style_update()

    def setup_columns(self, width: int) -> bool:
        """(Re)build the columns to fit `width`; True if they changed.

        A column change rebuilds the rows (rare: resizes only) and keeps the cursor's listener.
        """
        cols, bar, hidden = columns_for_width(width, self.required, self.totals, self.chosen, self.netns_width)
        self.term_width = width
        self.hidden = hidden
        if [(c.id, c.width) for c in cols] == [(c.id, c.width) for c in self.cols] and bar == self.bar:
            return False
        cursor_row, scroll_y = self.cursor_row, self.scroll_y
        self.clear(columns=True)
        self.order = []
        self.keys.clear()
        self._raw.clear()
        self._shown = {}
        self.cols, self.bar = cols, bar
        for col in cols:
            width = col.width + (bar + 2 if col.id == "acceptq" else 0)
            label = Text(col.label, justify="right" if col.right else "left")
            self.add_column(label, width=width, key=col.id)
        self.mark_sort(*self.sort_mark)
        if self.last is not None:
            self.apply(self.last, epoch=self._epoch)  # the same tick: the caller's re-apply then costs nothing
            self.move_cursor(row=cursor_row, animate=False, scroll=False)
            self.scroll_to(y=scroll_y, animate=False, immediate=True)
        return True

    def configure(
        self,
        *,
        required: frozenset[str] | None = None,
        totals: bool | None = None,
        chosen: frozenset[str] | None | bool = False,
    ) -> bool:
        """Change what decides the columns; rebuild them if that changes them."""
        if required is not None:
            self.required = required
        if totals is not None:
            self.totals = totals
        if chosen is not False:
            self.chosen = chosen  # type: ignore[assignment]
        if not self.term_width:
            return False
        return self.setup_columns(self.term_width)

    def mark_sort(self, sort_key: str, reverse: bool) -> None:
        self.sort_mark = (sort_key, reverse)
        up, down = ("^", "v") if ascii_mode() else ("▲", "▼")
        for col in self.cols:
            label = col.label + ((up if reverse else down) if col.sort_key == sort_key else "")
            column = self.columns.get(ColumnKey(col.id))
            if column is not None:
                column.label = Text(label, justify="right" if col.right else "left")
        self._clear_caches()
        self.refresh()

    def listener_at_cursor(self) -> ListenerKey | None:
        key = self.cursor_key()
        return self.keys.get(key) if key else None

    def apply(self, listeners: Sequence[Listener], netns_names: Mapping[int, str] | None = None,
              epoch: object = None) -> None:
        """Show exactly `listeners`, in this order, keeping the cursor on its listener.
        `netns_names`: inode -> name of the snapshot's named namespaces. `epoch`: what the
        rows' values and extras come from (the caller's tick); with the same epoch as the last
        call, a row whose Listener is the same object keeps its cells without recomputing them
        (a re-sort, a filter or `t` re-applies the same tick: bench/key_screens.py)."""
        same_epoch = epoch is not None and epoch == self._epoch
        self._epoch = epoch
        self.last = listeners
        if netns_names is not None:
            self.netns_names = netns_names
        names = self.netns_names
        if names:
            seen = {lst.key.netns for lst in listeners}
            longest = max((len(name) for ino, name in names.items() if ino in seen), default=0)
        else:
            longest = 0
        netns_width = min(COLUMN_BY_ID["netns"].width, max(NETNS_MIN, longest))
        if netns_width != self.netns_width:
            self.netns_width = netns_width
            if self.term_width and self.setup_columns(self.term_width):
                return  # setup_columns showed `listeners` already
        if not self.cols:
            return
        follow = row_key(self.followed) if self.followed is not None else None
        screen_offset = self.cursor_row - int(self.scroll_y)
        want = [row_key(lst.key) for lst in listeners]
        want_set = set(want)
        gone = [k for k in self.order if k not in want_set]
        if gone:
            self.remove_keys(gone)
            for k in gone:
                self.keys.pop(k, None)
                self._raw.pop(k, None)
        cols, bar = self.cols, self.bar
        idx = [RAW_INDEX[c.id] for c in cols]
        raw_map = self._raw
        changes: list[tuple[str, str, LazyCell]] = []
        added: list[tuple[str, list[LazyCell]]] = []
        extras = self.extras if any(c.id in ("last", "spark") for c in cols) else None
        shown = self._shown if same_epoch else {}
        for lst, key in zip(listeners, want, strict=False):
            if shown.get(key) is lst and key in raw_map:
                continue  # same tick, same record: its cells stand
            netns_name = names.get(lst.key.netns)
            raw = raw_values(lst, NO_EXTRAS if extras is None else extras(lst.key), netns_name)
            old = raw_map.get(key)
            if old is None:
                self.keys[key] = lst.key
                raw_map[key] = raw
                added.append((key, [LazyCell(c.id, raw[i], bar) for c, i in zip(cols, idx, strict=False)]))
            elif old != raw:
                raw_map[key] = raw
                for c, i in zip(cols, idx, strict=False):
                    if old[i] != raw[i]:
                        changes.append((key, c.id, LazyCell(c.id, raw[i], bar)))
        self._shown = dict(zip(want, listeners, strict=False))
        if added:
            self.add_keyed_rows(added)
            # Every column has a fixed width: measuring each new row (DataTable does it on
            # idle for content widths) would only cost time, ~0.2 s per 10k rows.
            self._new_rows.clear()
        self.set_cells(changes)
        self.set_order(want)
        if follow is not None:
            if follow in want_set:
                self.move_cursor_to_key(follow, keep_screen_offset=screen_offset)
            else:  # the followed listener is gone or filtered out: back to the line rule
                self.followed = None
