"""The one catalogue of key bindings: screens' BINDINGS, the footer, the `?` help
screen and the command palette are all built from it."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Key:
    id: str
    keys: str  # Textual key names, comma separated
    action: str  # action on the screen (or "app.x")
    description: str
    scope: str  # app | main | detail | closewait
    show: bool = True
    key_display: str | None = None
    palette: bool = True  # offered in the command palette
    priority: bool = False  # before the focused widget (replay's arrows over the table's)


CATALOGUE: tuple[Key, ...] = (
    Key("app.quit", "q", "app.quit", "Quit", "app"),
    # An SRE's reflex: Ctrl-C quits (Textual's default only tells you to press ctrl+q).
    Key("app.interrupt", "ctrl+c", "app.quit", "Quit", "app", show=False, palette=False, priority=True),
    Key("app.help", "question_mark", "app.help", "Keys+legend", "app", key_display="?"),
    Key("app.pause", "p", "app.toggle_pause", "Pause", "app"),
    Key("app.faster", "plus,equals_sign", "app.interval(-1)", "Faster", "app", show=False, key_display="+"),
    Key("app.slower", "minus", "app.interval(1)", "Slower", "app", show=False, key_display="-"),
    Key("app.close_wait", "c", "app.close_wait", "CLOSE_WAIT", "app"),
    Key("app.export", "e", "app.export", "Export screen (SVG+text)", "app", show=False),
    # htop's k is F9 / K here: k moves the cursor up (vi keys).
    Key("app.signal", "f9,K", "app.signal_owner", "Signal the owner (kill)", "app", show=False, key_display="F9"),
    Key("app.copy", "y", "app.copy_commands", "Copy ss/nstat commands or JSON", "app", show=False),
    # Only while replaying a recording (TcpqTopApp.check_action hides them otherwise).
    Key("replay.back", "left", "app.replay_step(-1)", "Replay: tick back", "app", key_display="←", priority=True),
    Key("replay.forward", "right", "app.replay_step(1)", "Replay: tick forward", "app", key_display="→", priority=True),
    Key("replay.start", "g", "app.replay_step(-1000000000)", "Replay: first tick", "app", show=False, priority=True),
    Key("replay.end", "G", "app.replay_step(1000000000)", "Replay: last tick", "app", show=False, priority=True),
    Key("main.sort", "s,f6", "pick_sort", "Sort", "main", key_display="s"),
    Key("main.reverse", "r", "reverse", "Reverse", "main"),
    Key("main.totals", "t", "toggle_totals", "Totals/rates", "main"),
    Key("main.columns", "f2", "choose_columns", "Columns", "main", key_display="F2"),
    Key("main.filter", "slash", "filter", "Filter", "main", key_display="/"),
    Key("main.netns", "n", "pick_netns", "Netns", "main"),
    Key("main.feed", "f", "toggle_feed", "Feed", "main"),
    Key("main.feed_follow", "F", "feed_follow", "Follow the selected listener (bar and feed)", "main",
        show=False),
    Key("main.feed_pause", "P", "feed_pause", "Feed: pause", "main", show=False),
    Key("main.focus_next", "tab", "focus_other", "Table/feed", "main", show=False, palette=False),
    Key("main.drill", "enter", "drill", "Open", "main", show=False),
    Key("main.escape", "escape", "clear_filter", "Clear filter", "main", show=False, palette=False),
    Key("detail.back", "escape,backspace", "back", "Back", "detail", key_display="esc"),
    Key("detail.open", "enter", "drill", "Open", "detail", show=False, palette=False),
    Key("listener.details", "d", "toggle_details", "Details", "listener"),
    Key("listener.findings", "D", "toggle_findings", "All findings", "listener", show=False),
    Key("closewait.sort", "s,f6", "cycle_sort", "Sort", "closewait", key_display="s"),
    Key("closewait.reverse", "r", "reverse", "Reverse", "closewait"),
)
NAVIGATION_HELP = (
    ("↑↓ j k", "move"),
    ("PgUp PgDn Home End", "page"),
    ("enter", "open the selected row"),
    ("esc", "back / clear the filter"),
    ("tab", "switch between the table and the feed"),
    ("ctrl+p", "command palette"),
)


KEY_NAMES = {
    "question_mark": "?",
    "slash": "/",
    "plus": "+",
    "equals_sign": "=",
    "minus": "-",
    "escape": "esc",
    "left": "←",
    "right": "→",
    "home": "Home",
    "end": "End",
    "f2": "F2",
    "f6": "F6",
    "ctrl+c": "ctrl+c",
}


def key_names(k: Key) -> str:
    """Readable names of a key's bindings for the help screen: `s / F6`, `+ / =`."""
    names = [KEY_NAMES.get(name, name) for name in k.keys.split(",")]
    return " / ".join(dict.fromkeys(names))


def replay_only(k: Key) -> bool:
    return k.id.startswith("replay.")


def bindings(scope: str) -> list[BindingType]:
    return [
        Binding(k.keys, k.action, k.description, show=k.show, key_display=k.key_display, id=k.id,
                priority=k.priority)
        for k in CATALOGUE
        if k.scope == scope
    ]


def for_scopes(*scopes: str) -> list[Key]:
    return [k for k in CATALOGUE if k.scope in scopes]
