"""Two header lines: where/when/how we sample, then per-netns overflow and drop rates."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

from tcptop_q.model import Snapshot
from tcptop_q.widgets.text import ascii_mode, fmt_num, inert, netns_label


def bpf_badge(snap: Snapshot | None) -> Text:
    if snap is None:
        return Text("BPF: loading", style="yellow")
    src = snap.sources
    state = src.bpf_state or ("live" if src.bpf else "off")
    if state == "live":
        return Text("BPF: live", style="bold green")
    if state == "loading":
        return Text("BPF: loading", style="yellow")
    reason = inert(src.bpf_error) if src.bpf_error else "not loaded"
    return Text(f"BPF: off: {reason}", style="red")


def header_text(
    snap: Snapshot | None,
    *,
    interval: float,
    now: float,
    paused: bool,
    stale_after: float = 3.0,
    mode: Text | None = None,
    replaying: bool = False,
) -> Text:
    """`mode`: REPLAY file/time/tick or REC file, right after the name (never cut at 80)."""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("tcpq-top", style="bold")
    sep = " │ " if not ascii_mode() else " | "
    if mode is not None:
        line.append(" ")
        line.append_text(mode)
    if snap is not None:
        line.append(sep)
        line.append(inert(snap.hostname), style="bold")
    line.append(sep + time.strftime("%H:%M:%S", time.localtime(now)))
    if not replaying:
        line.append(sep + f"every {interval:.3g}s")
    line.append(sep)
    if replaying:
        line.append("recorded ", style="dim")
    line.append_text(bpf_badge(snap))
    if snap is not None:  # least important: last, the first thing cut at 80 columns
        line.append(sep + inert(snap.kernel), style="dim")
    if paused:
        line.append(sep)
        line.append("PAUSED", style="reverse bold")
    elif not replaying and snap is not None and now - snap.time > max(stale_after, 3 * interval):
        line.append(sep)
        line.append(f"no sample for {now - snap.time:.0f}s", style="reverse bold")
    if snap is not None and snap.sources.notes:
        n = len(snap.sources.notes)
        line.append(sep)
        line.append(f"{n} note{'s' if n > 1 else ''}", style="bold reverse")
    line.append("\n")
    if snap is None:
        line.append("waiting for the first sample…", style="dim")
        return line
    nss = sorted(
        snap.netns,
        key=lambda ns: (-(ns.rates.get("ListenOverflows", 0.0) + ns.rates.get("ListenDrops", 0.0)), ns.inode),
    )
    for i, ns in enumerate(nss):
        if i:
            line.append("  ")
        ovf = ns.rates.get("ListenOverflows")
        drop = ns.rates.get("ListenDrops")
        hot = bool(ovf) or bool(drop)
        line.append(f"netns {netns_label(ns.inode, ns.name, 20)} ", style="dim")
        # The netns' own TcpExt counters, named as the kernel names them: ListenDrops is the
        # sum over the netns' listeners, not one row's DROP/s (sk_drops).
        line.append(f"ListenOverflows {fmt_num(ovf)}/s ListenDrops {fmt_num(drop)}/s",
                    style="bold red" if hot else "")
    if not nss:
        line.append("no netns counters", style="dim")
    return line


class TopBar(Static):
    def show(
        self,
        snap: Snapshot | None,
        *,
        interval: float,
        now: float,
        paused: bool,
        mode: Text | None = None,
        replaying: bool = False,
    ) -> None:
        self.update(header_text(snap, interval=interval, now=now, paused=paused, mode=mode,
                                replaying=replaying))
