"""Small modal screens: help (from the key catalogue), sort picker, netns picker."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import OptionList, SelectionList, Static
from textual.widgets.option_list import Option

from tcptop_q.model import Snapshot
from tcptop_q.screens import keys as keycat
from tcptop_q.widgets.listener_table import COLUMNS, LEGEND
from tcptop_q.widgets.text import inert, netns_names, short_netns

SCOPE_TITLES = {
    "app": "everywhere",
    "main": "listener table",
    "detail": "detail screens",
    "listener": "listener screen",
    "closewait": "CLOSE_WAIT view",
}


def help_table(replaying: bool = False) -> Table:
    """Keys (replay keys only while replaying), navigation, and the legend of every number."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for scope, title in SCOPE_TITLES.items():
        table.add_row(Text(title, style="underline"), "")
        for k in keycat.for_scopes(scope):
            if keycat.replay_only(k) and not replaying:
                continue
            table.add_row(Text(keycat.key_names(k)), Text(k.description))
        table.add_row("", "")
    table.add_row(Text("navigation", style="underline"), "")
    for keys, what in keycat.NAVIGATION_HELP:
        table.add_row(Text(keys), Text(what))
    table.add_row("", "")
    table.add_row(Text("legend", style="underline"), "")
    for name, what in LEGEND:
        table.add_row(Text(name), Text(what))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,q,question_mark", "dismiss_help", "Close", id="help.close"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(Text("tcpq-top keys and legend", style="bold"), id="help-title")
            with VerticalScroll():
                yield Static(help_table(bool(getattr(self.app, "replaying", False))), id="help-body")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class SortPicker(ModalScreen["str | None"]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker.cancel")]

    def __init__(self, current: str) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        options = [Option(f"{'severity':<10} what is wrong now first, then OVF/s (default)", id="severity")]
        options += [Option(f"{c.label:<10} {c.sort_key}", id=c.sort_key) for c in COLUMNS if c.sort_key]
        options.append(Option(f"{'DROPS':<10} drops (total)", id="drops"))
        with Vertical(id="picker-box"):
            yield Static("sort by", id="picker-title")
            yield OptionList(*options, id="picker")

    def on_mount(self) -> None:
        picker = self.query_one(OptionList)
        for i in range(picker.option_count):
            if picker.get_option_at_index(i).id == self.current:
                picker.highlighted = i
        picker.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class NetnsPicker(ModalScreen["int | None"]):
    """Returns a netns inode, 0 for "all", None for cancel."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker.cancel")]

    def __init__(self, snap: Snapshot | None, current: int | None) -> None:
        super().__init__()
        self.snap = snap
        self.current = current

    def compose(self) -> ComposeResult:
        counts: dict[int, int] = {}
        names = netns_names(self.snap.netns) if self.snap is not None else {}
        sources = {ns.inode: ns.name_source for ns in self.snap.netns} if self.snap is not None else {}
        if self.snap is not None:
            for ns in self.snap.netns:
                counts.setdefault(ns.inode, 0)
            for lst in self.snap.listeners:
                counts[lst.key.netns] = counts.get(lst.key.netns, 0) + 1
        options = [Option(f"all namespaces ({sum(counts.values())} listeners)", id="0")]
        options += [
            Option(
                (f"{inert(names[ns])} [{inert(sources.get(ns))}]  {ns}" if ns in names else f"{short_netns(ns)}  {ns}")
                + f"  ({n} listeners)",
                id=str(ns),
            )
            for ns, n in sorted(counts.items())
        ]
        with Vertical(id="picker-box"):
            yield Static("network namespace", id="picker-title")
            yield OptionList(*options, id="picker")

    def on_mount(self) -> None:
        picker = self.query_one(OptionList)
        want = str(self.current or 0)
        for i in range(picker.option_count):
            if picker.get_option_at_index(i).id == want:
                picker.highlighted = i
        picker.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_cancel(self) -> None:
        self.dismiss(None)


class ColumnChooser(ModalScreen["frozenset[str] | None"]):
    """htop's F2 idea: pick the main table's columns (the essentials always stay); enter
    applies, an empty choice goes back to fitting the width; escape cancels."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="chooser.cancel"),
        Binding("enter", "apply", "Apply", id="chooser.apply", priority=True),
    ]

    def __init__(self, shown: set[str]) -> None:
        super().__init__()
        self.shown = shown

    def compose(self) -> ComposeResult:
        items = [(f"{c.label:<9} {desc}", c.id, c.id in self.shown) for c, desc in _optional_columns()]
        with Vertical(id="picker-box"):
            yield Static("columns (space: toggle, enter: apply, esc: cancel)", id="picker-title")
            yield SelectionList[str](*items, id="picker")

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()

    def action_apply(self) -> None:
        self.dismiss(frozenset(self.query_one(SelectionList).selected))

    def action_cancel(self) -> None:
        self.dismiss(None)


def _optional_columns():
    legend = dict(LEGEND)
    return [(c, legend.get(c.label, "")[:40]) for c in COLUMNS if c.priority != 0]


class CopyPicker(ModalScreen["str | None"]):
    """Which command to copy to the terminal's clipboard (OSC 52)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="copy.cancel")]

    def __init__(self, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.choices = choices

    def compose(self) -> ComposeResult:
        options = [Option(Text.assemble((what, "bold"), "\n  ", text[:200]), id=str(i))
                   for i, (what, text) in enumerate(self.choices)]
        with Vertical(id="picker-box"):
            yield Static("copy to the clipboard (OSC 52)", id="picker-title")
            yield OptionList(*options, id="picker")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.choices[int(event.option.id or 0)][1])

    def action_cancel(self) -> None:
        self.dismiss(None)


SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGKILL", "SIGSTOP", "SIGCONT", "SIGUSR1", "SIGUSR2")


class SignalConfirm(ModalScreen["int | None"]):
    """Send a signal to pid N (cmdline shown); escape cancels, nothing is sent by default."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="signal.cancel")]

    def __init__(self, pid: int, cmdline: str) -> None:
        super().__init__()
        self.pid, self.cmdline = pid, cmdline

    def compose(self) -> ComposeResult:
        import signal

        title = Text(f"send a signal to pid {self.pid}: ", style="bold")
        title.append(inert(self.cmdline)[:120])
        options = [Option("cancel (esc)", id="0")]
        options += [Option(name, id=str(int(getattr(signal, name)))) for name in SIGNALS]
        with Vertical(id="picker-box"):
            yield Static(title, id="picker-title")
            yield OptionList(*options, id="picker")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        signum = int(event.option.id or 0)
        self.dismiss(signum or None)

    def action_cancel(self) -> None:
        self.dismiss(None)
