"""The owner-process panel (data from SnapshotSource.process_info, read in a worker)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from rich.text import Text

from tcptop_q.widgets.text import fmt_age, inert


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def process_text(
    pid: int | None, info: Mapping[str, Any] | None, *, now: float, loading: bool = False
) -> Text:
    text = Text(no_wrap=False)
    text.append("owner process\n", style="bold underline")
    if pid is None:
        text.append(
            "unknown: no inode owner visible (no permission, another netns, or not accepted yet)", style="dim"
        )
        return text
    if loading:
        text.append(f"pid {pid}: reading…", style="dim")
        return text
    if not info:
        text.append(f"pid {pid}: gone or not readable", style="dim")
        return text
    cmd = info.get("cmdline")
    if isinstance(cmd, (list, tuple)):
        cmd = " ".join(str(c) for c in cmd)
    started = info.get("started")
    rows = [
        ("pid", str(info.get("pid", pid))),
        ("ppid", str(info.get("ppid", "-"))),
        ("user", inert(info.get("user"))),
        ("cmdline", inert(cmd)),
        (
            "started",
            "-"
            if started is None
            else f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))} ({fmt_age(now - started)} ago)",
        ),
        ("threads", str(info.get("threads", "-"))),
        ("fds", str(info.get("fds", "-"))),
        ("CPU", "-" if info.get("cpu_percent") is None else f"{info['cpu_percent']:.1f}%"),
        ("RSS", _size(info.get("rss"))),
    ]
    for i, (name, value) in enumerate(rows):
        text.append(f"{name:>8} ", style="dim")
        text.append(value, style="bold" if name == "cmdline" else "")
        if i < len(rows) - 1:
            text.append("\n")
    return text
