"""One connection: its lifecycle timeline, queues and owner process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from tcptop_q.model import Transition
from tcptop_q.screens.base import DetailScreen
from tcptop_q.widgets.feed import STATE_STYLE
from tcptop_q.widgets.footer import KeyFooter
from tcptop_q.widgets.keyed_table import KeyedTable
from tcptop_q.widgets.text import fmt_age, inert, short_netns
from tcptop_q.widgets.topbar import TopBar

if TYPE_CHECKING:
    from tcptop_q.uimodel import SocketRef


def _ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.1f}ms"
    return fmt_age(ms / 1000)


def transition_cells(e: Transition) -> dict[str, Text]:
    stamp = time.strftime("%H:%M:%S", time.localtime(e.time)) + f".{int(e.time * 1000) % 1000:03d}"
    if e.kind == "accept":  # "accepted by pid N (fd M) after X ms in the accept queue"
        change = Text(inert(e.describe()), style="bold", no_wrap=True, overflow="ellipsis")
    else:
        change = Text(e.old, style=STATE_STYLE.get(e.old, ""))
        change.append(" → ")
        change.append(e.new, style=STATE_STYLE.get(e.new, ""))
    return {
        "time": Text(stamp),
        "change": change,
        "in_old": Text(_ms(e.ms_in_old), justify="right"),
        "proc": Text(f"{e.pid} {inert(e.comm)}"),
    }


class SocketScreen(DetailScreen):
    def __init__(self, ref: SocketRef) -> None:
        super().__init__()
        self.ref = ref
        self.timeline: list[Transition] | None = None

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield Static(id="title")
        with VerticalScroll(id="detail"):
            with Horizontal(id="panels"):
                yield Static(id="queues")
                yield Static(id="process")
            yield Static(Text("lifecycle timeline", style="bold underline"), id="timeline-title")
            table = KeyedTable.with_columns((
                ("TIME", 15, "time"),
                ("OLD → NEW", 26, "change"),
                ("IN OLD", 9, "in_old"),
                ("ON CPU", 20, "proc"),
            ), id="timeline")
            yield table
        yield KeyFooter()

    def on_mount(self) -> None:
        self.refresh_header()
        self.refresh_data()
        self.query_one("#timeline", KeyedTable).focus()

    def _current(self):
        """The latest dump row for this socket: (state, recv_q, send_q, pid, comm, age) or None."""
        app = self.tapp
        r = self.ref
        snap = app.snapshot
        if snap is not None:
            for cw in snap.close_wait:
                if (cw.netns, cw.laddr, cw.lport, cw.raddr, cw.rport) == (r.netns, r.laddr, r.lport, r.raddr, r.rport):
                    return ("CLOSE_WAIT", cw.recv_q, None, cw.pid, cw.comm, cw.age_s)
        for conns in app.connections.values():
            for c in conns:
                if (c.netns, c.laddr, c.lport, c.raddr, c.rport) == (r.netns, r.laddr, r.lport, r.raddr, r.rport):
                    return (c.state, c.recv_q, c.send_q, c.pid, c.comm, c.age_s)
        return None

    def refresh_data(self) -> None:
        r = self.ref
        title = Text(no_wrap=True, overflow="ellipsis")
        title.append(inert(r.label()), style="bold")
        title.append(f"  {r.family}  netns {short_netns(r.netns)}", style="dim")
        if r.inode:
            title.append(f"  inode {r.inode}", style="dim")
        self.query_one("#title", Static).update(title)

        cur = self._current()
        q = Text()
        q.append("now\n", style="bold underline")
        if cur is None:
            q.append("not in the last dump (closed, or not dumped yet)", style="dim")
            pid = r.pid
        else:
            state, recv_q, send_q, pid, comm, age = cur
            for i, (name, value) in enumerate(
                (
                    ("state", state),
                    ("recv_q", str(recv_q)),
                    ("send_q", "-" if send_q is None else str(send_q)),
                    ("age", fmt_age(age)),
                    ("owner", "-" if pid is None else f"{pid} {inert(comm, '?')}"),
                )
            ):
                q.append(f"{name:>7} ", style="dim")
                q.append(value, style=STATE_STYLE.get(value, "bold") if name == "state" else "")
                if i < 4:
                    q.append("\n")
            if pid is None:
                pid = r.pid
        self.query_one("#queues", Static).update(q)
        if pid != self.process_pid or not self.process_loaded:
            self.load_process(pid)
        self._read_timeline()

    @work(thread=True, exclusive=True, group="timeline", exit_on_error=False)
    def _read_timeline(self) -> None:
        r = self.ref
        try:
            events = list(self.tapp.source.timeline(r.netns, r.family, r.laddr, r.lport, r.raddr, r.rport))
        except Exception:
            events = []
        self.app.call_from_thread(self._show_timeline, events)

    def _show_timeline(self, events: list[Transition]) -> None:
        if not self.is_attached:
            return
        self.timeline = events
        want = {f"{e.time!r}|{e.kind}|{e.old}|{e.new}": e for e in sorted(events, key=lambda e: e.time)}
        self.query_one("#timeline", KeyedTable).sync(want, transition_cells)
        title = Text("lifecycle timeline", style="bold underline")
        if not events:
            snap = self.tapp.snapshot
            live = snap is not None and snap.sources.bpf
            why = ("none since eBPF went live (the socket predates the probes, or is a listener)" if live
                   else "eBPF is off: no transitions are recorded")
            title.append(f"  no transitions recorded: {why}", style="dim")
        self.query_one("#timeline-title", Static).update(title)
