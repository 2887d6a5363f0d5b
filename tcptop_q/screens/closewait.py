"""CLOSE_WAIT sockets grouped by owning process: finds the program that forgot close()."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tcptop_q.model import CloseWait
from tcptop_q.screens import keys as keycat
from tcptop_q.screens.base import DetailScreen
from tcptop_q.widgets.footer import KeyFooter
from tcptop_q.widgets.keyed_table import KeyedTable
from tcptop_q.widgets.text import fmt_age, inert, short_netns
from tcptop_q.widgets.topbar import TopBar

GROUP_SORTS = ("oldest", "count", "recv_q")


@dataclass(frozen=True)
class CloseWaitGroup:
    netns: int
    pid: int | None
    comm: str | None
    count: int  # accepted (held by an fd of the process): what a close() leak piles up
    oldest: float | None
    recv_q: int
    ports: tuple[int, ...]
    # Closed by the peer while still in the accept queue (inode 0): never accepted, so not the
    # process's leak; counted apart (docs/JSON.md, close_wait).
    queued: int = 0

    @property
    def key(self) -> str:
        return f"{self.netns}|{self.pid}"


def group_close_wait(rows, sort: str = "oldest", reverse: bool = False) -> list[CloseWaitGroup]:
    """Group by (netns, pid); worst first by `sort`. Pure: tested without a terminal."""
    groups: dict[tuple[int, int | None], list[CloseWait]] = {}
    for cw in rows:
        groups.setdefault((cw.netns, cw.pid), []).append(cw)
    out = []
    for (netns, pid), members in groups.items():
        held = [m for m in members if m.inode != 0]
        ages = [m.age_s for m in held if m.age_s is not None]
        comm = next((m.comm for m in members if m.comm), None)
        out.append(
            CloseWaitGroup(
                netns,
                pid,
                comm,
                len(held),
                max(ages) if ages else None,
                sum(m.recv_q for m in held),
                tuple(sorted({m.lport for m in members})),
                queued=len(members) - len(held),
            )
        )
    value = {
        "oldest": lambda g: -1.0 if g.oldest is None else g.oldest,
        "count": lambda g: g.count,
        "recv_q": lambda g: g.recv_q,
    }[sort]
    out.sort(key=lambda g: (g.netns, -1 if g.pid is None else g.pid))
    out.sort(key=value, reverse=not reverse)
    return out


def group_cells(g: CloseWaitGroup) -> dict[str, Text]:
    proc = Text("unknown owner", style="dim") if g.pid is None else Text(str(g.pid))
    if g.pid is not None:
        proc.append(" " + inert(g.comm, "?"), style="bold")
    return {
        "proc": proc,
        "netns": Text(short_netns(g.netns), style="dim"),
        "count": Text(str(g.count), justify="right", style="bold yellow" if g.count else "dim"),
        "queued": Text(str(g.queued), justify="right", style="" if g.queued else "dim"),
        "oldest": Text(fmt_age(g.oldest), justify="right"),
        "recv_q": Text(str(g.recv_q), justify="right"),
        "ports": Text(",".join(str(p) for p in g.ports)),
    }


def socket_cells(cw: CloseWait) -> dict[str, Text]:
    fam6 = cw.family == "ipv6"
    local = f"[{cw.laddr}]:{cw.lport}" if fam6 else f"{cw.laddr}:{cw.lport}"
    peer = f"[{cw.raddr}]:{cw.rport}" if fam6 else f"{cw.raddr}:{cw.rport}"
    return {
        "local": Text(inert(local)),
        "peer": Text(inert(peer)),
        "recv_q": Text(str(cw.recv_q), justify="right"),
        "age": Text(fmt_age(cw.age_s), justify="right"),
        "inode": Text(str(cw.inode), justify="right", style="dim"),
    }


class CloseWaitScreen(DetailScreen):
    BINDINGS = keycat.bindings("detail") + keycat.bindings("closewait")
    KEY_SCOPES = ("detail", "closewait")

    def __init__(self) -> None:
        super().__init__()
        self.sort = "oldest"
        self.reverse = False
        self.groups: dict[str, CloseWaitGroup] = {}

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield Static(id="title")
        table = KeyedTable.with_columns((
            ("PID/COMM", 20, "proc"),
            ("NETNS", 5, "netns"),
            ("HELD", 6, "count"),
            ("QUEUED", 6, "queued"),
            ("OLDEST", 8, "oldest"),
            ("RECV-Q", 7, "recv_q"),
            ("PORTS", 18, "ports"),
        ), id="groups")
        yield table
        yield KeyFooter()

    def on_mount(self) -> None:
        self.refresh_header()
        self.refresh_data()
        self.query_one("#groups", KeyedTable).focus()

    def refresh_data(self) -> None:
        snap = self.tapp.snapshot
        rows = list(snap.close_wait) if snap else []
        groups = group_close_wait(rows, self.sort, self.reverse)
        title = Text(no_wrap=True, overflow="ellipsis")
        queued = sum(g.queued for g in groups)
        title.append(f"CLOSE_WAIT: {len(rows)} sockets in {len(groups)} processes", style="bold")
        if queued:
            title.append(f" ({len(rows) - queued} held, {queued} queued: never accepted)", style="bold")
        title.append(
            f"   sort {self.sort} {'▲' if self.reverse else '▼'}   "
            "HELD: accepted, never close()d; QUEUED: closed by the peer before accept()",
            style="dim",
        )
        self.query_one("#title", Static).update(title)
        want = {g.key: g for g in groups}
        self.query_one("#groups", KeyedTable).sync(want, group_cells)
        self.groups = want

    def action_cycle_sort(self) -> None:
        self.sort = GROUP_SORTS[(GROUP_SORTS.index(self.sort) + 1) % len(GROUP_SORTS)]
        self.refresh_data()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.refresh_data()

    def action_drill(self) -> None:
        self._open_group()

    @on(DataTable.RowSelected, "#groups")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self._open_group()

    def _open_group(self) -> None:
        key = self.query_one("#groups", KeyedTable).cursor_key()
        g = self.groups.get(key) if key else None
        if g is not None:
            self.app.push_screen(CloseWaitSocketsScreen(g.netns, g.pid, g.comm))


class CloseWaitSocketsScreen(DetailScreen):
    """The CLOSE_WAIT sockets of one process, oldest first."""

    def __init__(self, netns: int, pid: int | None, comm: str | None) -> None:
        super().__init__()
        self.netns, self.pid, self.comm = netns, pid, comm
        self.rows: dict[str, CloseWait] = {}

    def compose(self) -> ComposeResult:
        yield TopBar(id="topbar")
        yield Static(id="title")
        yield Static(id="process")
        table = KeyedTable.with_columns((
            ("LOCAL", 21, "local"),
            ("PEER", 23, "peer"),
            ("RECV-Q", 7, "recv_q"),
            ("AGE", 8, "age"),
            ("INODE", 10, "inode"),
        ), id="sockets")
        yield table
        yield KeyFooter()

    def on_mount(self) -> None:
        self.refresh_header()
        self.refresh_data()
        self.load_process(self.pid)
        self.query_one("#sockets", KeyedTable).focus()

    def refresh_data(self) -> None:
        snap = self.tapp.snapshot
        mine = [
            cw for cw in (snap.close_wait if snap else ()) if cw.netns == self.netns and cw.pid == self.pid
        ]
        mine.sort(key=lambda cw: -(cw.age_s or 0.0))
        title = Text(no_wrap=True, overflow="ellipsis")
        who = "unknown owner" if self.pid is None else f"pid {self.pid} {inert(self.comm, '?')}"
        title.append(f"CLOSE_WAIT sockets of {who}: {len(mine)}", style="bold")
        title.append(f"  netns {short_netns(self.netns)}", style="dim")
        self.query_one("#title", Static).update(title)
        want = {f"{cw.cookie}|{cw.inode}|{cw.rport}": cw for cw in mine}
        self.query_one("#sockets", KeyedTable).sync(want, socket_cells)
        self.rows = want

    def action_drill(self) -> None:
        self._open()

    @on(DataTable.RowSelected, "#sockets")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self._open()

    def _open(self) -> None:
        from tcptop_q.uimodel import SocketRef

        key = self.query_one("#sockets", KeyedTable).cursor_key()
        cw = self.rows.get(key) if key else None
        if cw is not None:
            self.tapp.open_socket(SocketRef.of(cw))
