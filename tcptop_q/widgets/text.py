"""Make kernel/process strings safe to put on a terminal.

comm, cmdline and user names are chosen by whoever started the process: they may
hold escape sequences or Rich markup. Everything shown goes through `inert()`
and into a `rich.text.Text` (never a markup string).
"""

from __future__ import annotations

from collections.abc import Iterable

from tcptop_q.model import NetnsCounters
from tcptop_q.model import inert as inert  # one inert() for the TUI and --batch (tcptop_q/model.py)


def fmt_num(value: float | None, digits: int = 1) -> str:
    """None means unknown and shows as '-', never as 0."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def fmt_wait(seconds: float | None) -> str:
    """A latency: 40us, 3.2ms, 250ms, 1.2s; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.1f}s" if seconds < 100 else f"{seconds:.0f}s"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds * 1000:.0f}ms"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def short_netns(inode: int) -> str:
    """Namespace inodes are 10 digits; the last 4 tell them apart on one host."""
    return f"{'~' if ascii_mode() else '…'}{inode % 10000:04d}"


_ASCII: bool | None = None


def ascii_mode() -> bool:
    """True when the terminal or locale cannot draw the glyphs (sparklines, ▼, bars, boxes):
    a non-UTF-8 locale (LANG=C), TERM=linux/vt100/dumb, or TCPQ_ASCII=1. TCPQ_ASCII=0 forces
    Unicode."""
    global _ASCII
    if _ASCII is None:
        _ASCII = detect_ascii()
    return _ASCII


def set_ascii_mode(value: bool | None) -> None:
    global _ASCII
    _ASCII = value


def detect_ascii(env: dict[str, str] | None = None) -> bool:
    import os

    env = dict(os.environ) if env is None else env
    forced = env.get("TCPQ_ASCII")
    if forced in ("0", "1"):
        return forced == "1"
    term = env.get("TERM", "")
    if term in ("linux", "vt100", "vt102", "vt220", "dumb") or term.startswith("vt"):
        return True
    locale = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    return not any(tag in locale.upper().replace("-", "") for tag in ("UTF8",))


def glyph(unicode: str, ascii_text: str) -> str:
    return ascii_text if ascii_mode() else unicode



def netns_label(inode: int, name: str | None, width: int = 24) -> str:
    """A netns as people know it (`ip netns` name, container, pod: probes/names.py), else its inode."""
    if name is None:
        return short_netns(inode)
    text = inert(name)
    return text if len(text) <= width else text[: width - 1] + glyph("…", "~")


def netns_names(netns: Iterable[NetnsCounters]) -> dict[int, str]:
    """inode -> name for the named namespaces of a snapshot."""
    return {ns.inode: ns.name for ns in netns if ns.name is not None}
