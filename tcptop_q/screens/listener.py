"""One listener: diagnosis, queues, history sparklines, sysctls, owner process, children."""

from __future__ import annotations

import math
import time
from functools import partial

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Sparkline, Static

from tcptop_q.diagnosis import diagnose
from tcptop_q.model import Connection, LatencySummary, Listener, ListenerKey, NetnsCounters
from tcptop_q.reuseport import ReuseportGroup, members_of
from tcptop_q.screens import keys as keycat
from tcptop_q.screens.base import DetailScreen
from tcptop_q.source import FeedFocus
from tcptop_q.widgets.footer import KeyFooter
from tcptop_q.widgets.keyed_table import KeyedTable
from tcptop_q.widgets.listener_table import accept_cell
from tcptop_q.widgets.text import (
    ascii_mode,
    fmt_age,
    fmt_num,
    fmt_wait,
    glyph,
    inert,
    netns_label,
    short_netns,
)
from tcptop_q.widgets.topbar import TopBar

MARKS = {"crit": "✖ ", "warn": "▲ ", "info": "• ", "ok": "✔ "}
ASCII_MARKS = {"crit": "X ", "warn": "! ", "info": "* ", "ok": "ok "}
SEVERITY_CLASS = {"crit": "-crit", "warn": "-warn", "info": "-info", "ok": "-ok"}
SYSCTL_NAMES = ("somaxconn", "tcp_max_syn_backlog", "tcp_syncookies", "tcp_abort_on_overflow")


def since_label(when: float | None) -> str:
    return "since eBPF went live" if when is None else f"since {time.strftime('%H:%M', time.localtime(when))}"


def queues_text(lst: Listener, bpf_since: float | None = None) -> Text:
    """Every total says where it starts: sk_drops counts since the socket was created, the
    eBPF totals since the probes went live; - where eBPF cannot tell."""
    live = since_label(bpf_since)

    def total(value: int | None, rate_value: float | None, unknown: str = "- (needs eBPF)") -> str:
        if value is None:
            return unknown
        return f"{value} {live}, {fmt_num(rate_value)}/s"

    t = Text()
    t.append("queues\n", style="bold underline")
    t.append("accept queue ", style="dim")
    t.append_text(accept_cell(lst.accept_queue, lst.backlog, 10))
    t.append(f"  (holds {lst.backlog + 1})\n", style="dim")
    rows = [
        ("peak depth", fmt_num(lst.peak_accept_queue) if lst.peak_accept_queue is not None else "- (needs eBPF)"),
        ("SYN queue", str(lst.syn_queue)),
        ("sk_drops", f"{lst.drops} since the socket was created, {fmt_num(lst.drop_rate)}/s"),
        ("overflows", total(lst.overflows, lst.overflow_rate)),
        ("SYN-ACK rtx", total(lst.synack_retrans, lst.synack_retrans_rate)),
        ("queued", total(lst.queued, lst.queued_rate)),
        ("accepted", total(lst.accepted, lst.accepted_rate, "- (no accept hook)")),
        ("accept wait", latency_line(lst.accept_wait)),
        ("handshake", latency_line(lst.handshake)),
        (
            "resets",
            "- (needs eBPF)"
            if lst.resets_sent is None
            else f"{fmt_num(lst.resets_sent)} sent, {fmt_num(lst.resets_received)} received {live}",
        ),
    ]
    for i, (name, value) in enumerate(rows):
        t.append(f"{name:>12} ", style="dim")
        t.append(value, style="dim" if value.startswith("-") else "")
        if i < len(rows) - 1:
            t.append("\n")
    return t


def drop_reasons_text(lst: Listener, bpf_since: float | None = None) -> Text:
    """kfree_skb reasons charged to this listener (eBPF), worst first."""
    t = Text()
    t.append("drop reasons", style="bold underline")
    t.append(f" ({since_label(bpf_since)})\n", style="dim")
    reasons = lst.drop_reasons
    if reasons is None:
        t.append("- (needs eBPF)", style="dim")
        return t
    if not reasons:
        t.append("none seen", style="dim")
        return t
    items = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    for i, (name, n) in enumerate(items):
        t.append(f"{n:>8} ", style="bold")
        t.append(inert(name))
        if i < len(items) - 1:
            t.append("\n")
    return t


def _netns_title(title: Text, key: ListenerKey, ns: NetnsCounters | None) -> None:
    if ns is not None and ns.name is not None:
        title.append(f"  {key.family}  netns ", style="dim")
        title.append(netns_label(key.netns, ns.name, 48))
        title.append(f" [{inert(ns.name_source)}] {key.netns}", style="dim")
    else:
        title.append(f"  {key.family}  netns {short_netns(key.netns)}", style="dim")


def title_text(key: ListenerKey, lst: Listener | None, ns: NetnsCounters | None = None) -> Text:
    """Owner and queue first: at 80 columns the end of the line is cut."""
    title = Text(no_wrap=True, overflow="ellipsis")
    title.append(inert(key.label()), style="bold")
    if lst is None:
        title.append("  (gone: the socket is no longer listening)", style="reverse")
        _netns_title(title, key, ns)
        return title
    others = [str(p) for p in (lst.holders or ()) if p != lst.pid]
    if lst.pid is not None:
        title.append(f"  pid {lst.pid}")
        if others:  # held by more processes than the one named (pre-fork workers, a hand-over)
            title.append(f"+{len(others)}", style="cyan")
        title.append(" ")
        title.append(inert(lst.comm, "?"), style="bold")
    else:
        title.append("  pid -", style="dim")
    title.append("  accept ")
    title.append_text(accept_cell(lst.accept_queue, lst.backlog, 0))
    title.append(f"  SYN {lst.syn_queue}")
    _netns_title(title, key, ns)
    title.append(f"  inode {lst.inode}  cookie {key.cookie}", style="dim")
    if others:
        shown = ", ".join(others[:8]) + (f", +{len(others) - 8}" if len(others) > 8 else "")
        title.append(f"  also held by pid {shown}", style="cyan")
    return title


def latency_line(lat: LatencySummary | None) -> str:
    if lat is None:
        return "- (unknown on this kernel)"
    if not lat.count:
        return "none yet"
    return (f"p50 {fmt_wait(lat.p50_s)}  p90 {fmt_wait(lat.p90_s)}  p99 {fmt_wait(lat.p99_s)}  "
            f"max {fmt_wait(lat.max_s)}  ({lat.count})")


def wait_histogram(lat: LatencySummary | None, width: int = 24) -> Text:
    """The accept-wait histogram since live, one row per power-of-two octave that has samples."""
    t = Text()
    t.append("accept wait (queued -> accept())\n", style="bold underline")
    if lat is None:
        t.append("unknown: no accept hook on this kernel", style="dim")
        return t
    if not lat.count:
        t.append("nothing accepted since the probes went live", style="dim")
        return t
    octaves: dict[float, int] = {}
    for upper, n in lat.buckets:
        edge = 2.0 ** math.ceil(math.log2(max(upper, 1e-6) * 1e6)) / 1e6  # octave's upper edge, s
        octaves[edge] = octaves.get(edge, 0) + n
    top = max(octaves.values())
    for i, (edge, n) in enumerate(sorted(octaves.items())):
        if i:
            t.append("\n")
        t.append(f"{'<= ' + fmt_wait(edge):>10} ", style="dim")
        t.append(glyph("█", "#") * max(1, round(width * n / top)), style="yellow" if edge >= 0.1 else "green")
        t.append(f" {n}")
    return t


def sysctl_text(netns: int, sysctls: dict[str, int] | None) -> Text:
    t = Text()
    t.append(f"netns {netns} sysctls\n", style="bold underline")
    if sysctls is None:
        t.append("reading…", style="dim")
        return t
    names = [n for n in SYSCTL_NAMES if n in sysctls] + sorted(n for n in sysctls if n not in SYSCTL_NAMES)
    if not names:
        t.append("not readable", style="dim")
    for i, name in enumerate(names):
        t.append(f"{name:>22} ", style="dim")
        t.append(str(sysctls[name]))
        if i < len(names) - 1:
            t.append("\n")
    return t


def children_summary(children: dict[str, int]) -> Text:
    t = Text("children ", style="bold")
    if not children:
        t.append("none", style="dim")
    for i, (state, n) in enumerate(sorted(children.items(), key=lambda kv: (-kv[1], kv[0]))):
        t.append(("  " if i else "") + f"{state} ", style="dim")
        t.append(str(n), style="yellow" if state == "CLOSE_WAIT" and n else "bold")
    return t


def reuseport_text(lst: Listener, members: tuple[Listener, ...]) -> Text:
    """The SO_REUSEPORT group's members side by side, this one marked."""
    group = ReuseportGroup(members[0].reuseport_group or "", members)
    t = Text()
    t.append(f"SO_REUSEPORT group: {len(members)} members", style="bold underline")
    t.append(f"  queued max/mean {fmt_num(group.queued_imbalance)}  fill max/mean {fmt_num(group.fill_imbalance)}\n",
             style="dim")
    t.append(f"  {'cookie':>10} {'pid':>8} {'accept queue':>12} {'drops/s':>8} {'queued/s':>9} {'queued':>8}\n",
             style="dim")
    for i, m in enumerate(members):
        t.append("▶ " if m.key == lst.key else "  ", style="bold")
        t.append(f"{m.key.cookie:>10} {fmt_num(m.pid):>8} ")
        cell = accept_cell(m.accept_queue, m.backlog, 0)
        cell.pad_left(max(0, 12 - len(cell)))
        t.append_text(cell)
        t.append(f" {fmt_num(m.drop_rate):>8} {fmt_num(m.queued_rate):>9} {fmt_num(m.queued):>8}")
        if i < len(members) - 1:
            t.append("\n")
    return t


def conn_key(c: Connection) -> str:
    return f"{c.raddr}|{c.rport}|{c.cookie}|{c.inode}"


def child_cells(c: Connection) -> dict[str, Text]:
    peer = f"[{c.raddr}]:{c.rport}" if c.family == "ipv6" else f"{c.raddr}:{c.rport}"
    return {
        "peer": Text(inert(peer)),
        "state": Text(c.state, style="yellow" if c.state == "CLOSE_WAIT" else ""),
        "age": Text(fmt_age(c.age_s), justify="right"),
        # Never accepted: how long it has waited in the accept queue.
        "in_queue": Text(fmt_age(c.queued_s), justify="right", style="yellow" if c.queued_s else "dim"),
        "recv_q": Text(str(c.recv_q), justify="right", style="bold" if c.recv_q else ""),
        "send_q": Text(str(c.send_q), justify="right"),
        "proc": Text("-" if c.pid is None else f"{c.pid} {inert(c.comm, '?')}"),
    }


class ListenerScreen(DetailScreen):
    BINDINGS = keycat.bindings("detail") + keycat.bindings("listener")
    KEY_SCOPES = ("detail", "listener")
    def __init__(self, key: ListenerKey) -> None:
        super().__init__()
        self.key = key
        self.sysctls: dict[str, int] | None = None
        self.conns: dict[str, Connection] = {}
        self.diagnosis_text = ""
        self.details_wanted: bool | None = None  # None: shown when the terminal is tall enough
        self.findings_open = False  # only the headline finding, unless opened (`D`)

    def _focus_feed(self, port: int | None) -> None:
        # Off the UI thread (the probes' lock may be held by a read in the collector), and
        # owned by the app: a worker of this screen would be cancelled as it unmounts.
        src = self.tapp.source
        if isinstance(src, FeedFocus):  # queued; the collector thread applies it (tcptop_q/source.py)
            self.tapp.run_worker(partial(src.focus_port, port), thread=True, group="feed-focus", exit_on_error=False)

    def on_unmount(self) -> None:
        self._focus_feed(None)

    def compose(self) -> ComposeResult:
        # Owner, diagnosis headline, queue and the first children always on screen (80x24);
        # the details (queues, history, sysctls, process, drop reasons) scroll below, `d` folds them.
        yield TopBar(id="topbar")
        yield Static(id="title")
        yield Static(id="diagnosis")
        yield Static(id="children-summary")
        table = KeyedTable.with_columns((
            ("PEER", 23, "peer"),
            ("STATE", 11, "state"),
            ("AGE", 7, "age"),
            ("IN-QUEUE", 8, "in_queue"),
            ("RECV-Q", 6, "recv_q"),
            ("SEND-Q", 6, "send_q"),
            ("PID/COMM", 16, "proc"),
        ), id="children")
        yield table
        with VerticalScroll(id="detail"):
            with Horizontal(id="panels"):
                with Vertical(id="left"):
                    yield Static(id="queues")
                    yield Static(id="drop-reasons")
                    yield Static(id="accept-wait")
                    yield Static(id="sysctls")
                with Vertical(id="right"):
                    yield Static(id="spark-peak-label", classes="spark-label")
                    yield Sparkline([], id="spark-peak")
                    yield Static(id="spark-drop-label", classes="spark-label")
                    yield Sparkline([], id="spark-drop")
                    yield Static(id="spark-accept-label", classes="spark-label")
                    yield Sparkline([], id="spark-accept")
                    yield Static(id="process")
            yield Static(id="reuseport")
        yield KeyFooter()

    def on_resize(self, event) -> None:
        self.set_class(event.size.width < 120, "-narrow")
        if self.details_wanted is None:
            self._show_details(event.size.height >= 30)

    def _show_details(self, show: bool) -> None:
        self.query_one("#detail").display = show
        self.set_class(not show, "-folded")

    def action_toggle_details(self) -> None:
        self.details_wanted = not self.query_one("#detail").display
        self._show_details(self.details_wanted)

    def action_toggle_findings(self) -> None:
        self.findings_open = not self.findings_open
        self.refresh_data()

    def on_mount(self) -> None:
        self._focus_feed(self.key.lport)
        self.refresh_header()
        self.refresh_data()
        self.query_one("#children", KeyedTable).focus(scroll_visible=False)
        lst = self.tapp.listener(self.key)
        self.load_process(lst.pid if lst else None)
        ns = self._netns_counters()
        if ns is not None and ns.sysctls:
            self.sysctls = dict(ns.sysctls)
        else:
            self._read_sysctls(self.key.netns)

    @work(thread=True, exclusive=True, group="sysctls", exit_on_error=False)
    def _read_sysctls(self, netns: int) -> None:
        try:
            values = dict(self.tapp.source.netns_sysctls(netns))
        except Exception:
            values = {}
        self.app.call_from_thread(self._sysctls_read, values)

    def _sysctls_read(self, values: dict[str, int]) -> None:
        self.sysctls = values
        self.refresh_data()

    def _netns_counters(self) -> NetnsCounters | None:
        snap = self.tapp.snapshot
        if snap is None:
            return None
        return next((ns for ns in snap.netns if ns.inode == self.key.netns), None)

    def refresh_data(self) -> None:
        app = self.tapp
        lst = app.listener(self.key)
        self.query_one("#title", Static).update(title_text(self.key, lst, self._netns_counters()))
        if lst is None:
            return

        snap = app.snapshot
        assert snap is not None
        ns = self._netns_counters()
        sysctls = (
            self.sysctls if self.sysctls is not None else (dict(ns.sysctls) if ns and ns.sysctls else None)
        )
        members = members_of(lst, snap.listeners)
        findings = diagnose(lst, sysctls=sysctls or {}, netns=ns, close_wait=snap.close_wait, group=members)
        full = Text()
        for i, f in enumerate(findings):
            if i:
                full.append("\n")
            marks = ASCII_MARKS if ascii_mode() else MARKS
            full.append(marks[f.severity], style="bold reverse" if f.severity == "crit" else "bold")
            full.append(f.text, style="bold" if i == 0 and f.severity in ("crit", "warn") else "")
        self.diagnosis_text = full.plain
        panel = self.query_one("#diagnosis", Static)
        if self.findings_open or len(findings) == 1:
            panel.update(full)
        else:
            head = full.split("\n")[0]
            head.append(f"  (+{len(findings) - 1} more: D)", style="dim")
            panel.update(head)
        for cls in SEVERITY_CLASS.values():
            panel.remove_class(cls)
        panel.add_class(SEVERITY_CLASS[findings[0].severity])

        self.query_one("#queues", Static).update(queues_text(lst, app.bpf_live_since))
        self.query_one("#drop-reasons", Static).update(drop_reasons_text(lst, app.bpf_live_since))
        self.query_one("#accept-wait", Static).update(wait_histogram(lst.accept_wait))
        self.query_one("#sysctls", Static).update(sysctl_text(self.key.netns, sysctls))
        self._sparklines()
        if lst.pid != self.process_pid:
            self.load_process(lst.pid)

        group_panel = self.query_one("#reuseport", Static)
        group_panel.display = bool(members)
        if members:
            group_panel.update(reuseport_text(lst, members))
        self.query_one("#children-summary", Static).update(children_summary(dict(lst.children)))
        self._children(snap.close_wait)

    def _sparklines(self) -> None:
        """No graph for what cannot be known: a series of unknowns (NaN) hides its sparkline."""
        hist = self.tapp.history
        for field, wid, label in (
            ("peak", "spark-peak", "peak accept queue"),
            ("drop_rate", "spark-drop", "sk_drops/s"),
            ("queued_rate", "spark-accept", "queued/s"),
        ):
            values = hist.get(self.key, field)
            known = [v for v in values if not math.isnan(v)]
            text = Text(f"{label} ", style="dim")
            if known:
                text.append(f"now {fmt_num(known[-1])}  max {fmt_num(max(known))}", style="bold")
                text.append(f"  ({len(known)} samples)", style="dim")
            else:
                text.append("- unknown (needs eBPF)" if values else "no samples yet", style="dim")
            self.query_one(f"#{wid}-label", Static).update(text)
            spark = self.query_one(f"#{wid}", Sparkline)
            spark.display = bool(known)
            spark.data = known

    def _children(self, close_wait) -> None:
        app = self.tapp
        conns = list(app.connections.get(self.key, ()))
        if not conns:  # no dump yet: CLOSE_WAIT rows come every tick
            conns = [
                Connection(
                    cw.netns,
                    cw.family,
                    "CLOSE_WAIT",
                    cw.laddr,
                    cw.lport,
                    cw.raddr,
                    cw.rport,
                    cw.inode,
                    cw.cookie,
                    cw.recv_q,
                    0,
                    cw.pid,
                    cw.comm,
                    cw.age_s,
                    listener=cw.listener,
                    queued_s=cw.queued_s,
                )
                for cw in close_wait
                if cw.listener == self.key
            ]
        conns.sort(key=lambda c: (c.state != "CLOSE_WAIT", -(c.age_s or 0.0), c.rport))
        want = {conn_key(c): c for c in conns}
        self.query_one("#children", KeyedTable).sync(want, child_cells)
        self.conns = want

    def action_drill(self) -> None:
        self._open_child()

    @on(DataTable.RowSelected, "#children")
    def _child_selected(self, event: DataTable.RowSelected) -> None:
        self._open_child()

    def _open_child(self) -> None:
        from tcptop_q.uimodel import SocketRef

        key = self.query_one("#children", KeyedTable).cursor_key()
        c = self.conns.get(key) if key else None
        if c is None:
            return
        self.tapp.open_socket(SocketRef.of(c))
