"""tcpq-top's Textual application: owns the collector thread, the UI state and the history.

Data flows one way: SnapshotSource.sample() (collector thread) -> the LatestSnapshot slot
(tcptop_q/uimodel.py: latest-only, one pending SnapshotPending message) -> apply_snapshot() on the
UI thread inside batch_update() -> the visible screen (docs/ARCHITECTURE.md, "Threads").
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import App, SystemCommand
from textual.message import Message
from textual.screen import Screen

from tcptop_q import lifecycle
from tcptop_q.model import (
    SORT_KEYS,
    Connection,
    Listener,
    ListenerKey,
    Snapshot,
    Transition,
    sort_listeners,
)
from tcptop_q.screens import keys as keycat
from tcptop_q.source import ReplayControl, SnapshotSource
from tcptop_q.uimodel import HISTORY_LEN, History, LatestSnapshot, SocketRef
from tcptop_q.widgets.text import ascii_mode, inert

__all__ = ["HISTORY_LEN", "History", "SocketRef", "SnapshotSource", "TcpqTopApp"]  # History, SocketRef: uimodel

SEVERITY = "severity"  # the TUI's default order: what is wrong now first (diagnosis.severity_rank)
UI_SORT_KEYS = (SEVERITY, *SORT_KEYS)
INTERVALS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

# The UI's full (oldest-generation) GC passes are scheduled, not left to chance: with 10k
# listeners the app holds ~350k objects and one pass costs 40-260 ms of CPU, which, when it
# fell on a key, was most of the time from Escape to the main table (bench/key_screens.py,
# docs/BENCHMARKS.md). The young generations still collect as usual; the full pass runs
# after a tick's frame is out, once no key came for GC_QUIET_S, at least every GC_LATEST_S.
GC_EVERY_S = 30.0
GC_QUIET_S = 2.0
GC_LATEST_S = 120.0
GC_NO_AUTO_FULL = 1 << 30  # gc threshold2: Python itself never starts a full pass


class SnapshotReady(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class SnapshotPending(Message):
    """The collector put a snapshot into the app's LatestSnapshot slot (at most one pending)."""


class CollectorFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


def listener_matches(lst: Listener, terms: Sequence[str]) -> bool:
    """Every term must match the port, the address, the comm or the pid."""
    if not terms:
        return True
    hay = f"{lst.key.label()} {lst.comm or ''} {lst.pid if lst.pid is not None else ''}".lower()
    port = str(lst.key.lport)
    return all(term == port or term in hay for term in terms)


class TcpqTopApp(App):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "tcpq-top"
    BINDINGS = keycat.bindings("app")
    ENABLE_COMMAND_PALETTE = True

    def __init__(
        self,
        source: SnapshotSource,
        *,
        sort: str = SEVERITY,
        reverse: bool = False,
        filter_text: str = "",
        clock: Callable[[], float] | None = None,
        start_collector: bool = True,
        history_len: int = HISTORY_LEN,
    ) -> None:
        super().__init__()
        if sort not in UI_SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}; one of {', '.join(UI_SORT_KEYS)}")
        self.source = source
        self.clock = clock or time.time
        self.sort_key = sort
        self.sort_reverse = reverse
        self.filter_text = filter_text
        self.netns_filter: int | None = None
        self.paused = False
        self.snapshot: Snapshot | None = None
        self.connections: Mapping[ListenerKey, Sequence[Connection]] = {}
        self.connections_time: float | None = None
        self.history = History(history_len)
        self.collector_error: str | None = None
        self.ticks_applied = 0
        # The first sample with the probes live: where every eBPF total starts ("since 14:02").
        self.bpf_live_since: float | None = None
        self._start_collector = start_collector
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._held_events: list[Transition] = []
        self._latest = LatestSnapshot()  # collector -> UI, latest-only
        self._paused_latest: Snapshot | None = None  # the newest tick, while paused
        self._paused_connections: Snapshot | None = None
        self._gc_thresholds: tuple[int, int, int] | None = None
        self._gc_last = self._last_key = time.monotonic()

    # ------------------------------------------------------------ lifecycle
    def on_mount(self) -> None:
        from tcptop_q.screens.main import MainScreen

        self._gc_thresholds = gc.get_threshold()
        gc.set_threshold(self._gc_thresholds[0], self._gc_thresholds[1], GC_NO_AUTO_FULL)

        if ascii_mode():  # LANG=C, TERM=linux/vt100: no box, block or arrow glyphs
            self.add_class("-ascii")
        self.push_screen(MainScreen())
        if self._start_collector:
            self.start_collector()
        self._exit_on_signals()

    def _exit_on_signals(self) -> None:
        """SIGTERM, and SIGHUP when the ssh session drops, end the app the way q does: the
        terminal is restored, the driver's threads stop, then the probes are detached.

        Python-level handlers, not the event loop's: Textual's shutdown can block for good
        when the terminal has gone (its writer thread dies on EIO and the queue to it fills),
        and a handler queued on a blocked loop would never run. This one runs in the main
        thread even then, and arms a watchdog that leaves cleanly after a grace period."""
        if self.is_headless:
            return  # tests: leave the test runner's signals alone
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            lifecycle.on_forced_exit(self.source.close)
            lifecycle.on_exit_signals(lambda code: loop.call_soon_threadsafe(partial(self.exit, None, code)), grace=5.0)
        watch = threading.Thread(target=self._watch_terminal, name="tcpq-tty-watch", daemon=True)
        watch.start()

    def _watch_terminal(self) -> None:
        """A dropped ssh session does not always reach us as SIGHUP before Textual blocks on
        the dead terminal; the terminal itself tells: tcgetpgrp fails with EIO once hung up."""
        import errno
        import os
        import sys

        try:
            fd = sys.__stdin__.fileno() if sys.__stdin__ is not None else 0
            os.tcgetpgrp(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:  # hung up before we even looked
                self._arm_force_exit(128 + signal.SIGHUP, 0.0)
            return  # otherwise: no terminal to watch
        except ValueError:
            return
        while not self._stop.wait(0.5):
            try:
                os.tcgetpgrp(fd)
            except OSError:
                # Nothing left to restore on a terminal that is gone: detach and leave.
                self._arm_force_exit(128 + signal.SIGHUP, 0.0)
                return

    def _arm_force_exit(self, code: int, delay: float) -> None:
        lifecycle.on_forced_exit(self.source.close)
        lifecycle.arm_force_exit(code, delay)

    def start_collector(self) -> None:
        self._thread = threading.Thread(target=self._collect, name="tcpq-collector", daemon=True)
        self._thread.start()

    @property
    def replaying(self) -> bool:
        """The source is a recording that can be stepped (ReplaySource)."""
        return isinstance(self.source, ReplayControl)

    def mode_badge(self) -> Text | None:
        """REPLAY (file, recorded time, tick n/N, END) or REC (file): a replay never looks live."""
        src: Any = self.source
        if self.replaying:
            badge = Text("REPLAY", style="bold reverse")
            describe = getattr(src, "describe", None)
            if callable(describe):
                badge.append(" " + inert(describe().removeprefix("replay ")))
            if getattr(src, "at_end", False):
                badge.append(" ")
                badge.append("END", style="bold reverse")
            return badge
        recorder = getattr(src, "recorder", None)
        if recorder is not None:
            error = getattr(src, "error", None)
            badge = Text("REC", style="bold reverse")
            path = getattr(recorder, "path", None)
            if path:
                badge.append(" " + inert(os.path.basename(os.fspath(path))))
            if error:
                badge.append(f" stopped: {inert(error)}", style="bold")
            return badge
        return None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "replay_step":
            return self.replaying
        return True

    def _collect(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            src = self.source
            if isinstance(src, ReplayControl) and (self.paused or src.at_end):
                # A paused replay stands still: sampling would move it on.
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                snap = self.source.sample()
            except Exception as exc:  # keep the UI up, say why
                self.post_message(CollectorFailed(f"{type(exc).__name__}: {exc}"))
                snap = None
            if self._stop.is_set():
                break
            if snap is not None and self._latest.put(snap):
                self.post_message(SnapshotPending())  # a slow UI gets the newest tick, never a backlog
            wait = max(0.0, float(self.source.interval) - (time.monotonic() - started))
            self._wake.wait(wait)
            self._wake.clear()

    def stop_collector(self) -> None:
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(2.0, 2 * float(self.source.interval)))

    def on_unmount(self) -> None:
        if self._gc_thresholds is not None:
            gc.set_threshold(*self._gc_thresholds)
            self._gc_thresholds = None
        if not self.is_headless:
            # Whatever ends the app, the process must not outlive it by long (see above).
            self._arm_force_exit(1, 10.0)
        self.stop_collector()
        try:
            self.source.close()
        except Exception:
            pass

    # ------------------------------------------------------------ snapshots
    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.apply_snapshot(message.snapshot)

    def on_snapshot_pending(self, _message: SnapshotPending) -> None:
        snap = self._latest.take()
        if snap is not None:
            self.apply_snapshot(snap)

    def on_collector_failed(self, message: CollectorFailed) -> None:
        self.collector_error = message.error
        self.notify(message.error, title="sampling failed", severity="error", timeout=5)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Record a snapshot and show it (unless paused). UI thread only.

        The cyclic GC is held off while a tick is applied: with 10k listeners a tick
        allocates ~100k short-lived objects, which would trigger ~150 collections
        (some of them full) in the middle of the update; one young collection
        after the tick costs far less (bench/ui_tick.py, docs/BENCHMARKS-ui.md).
        """
        with lifecycle.gc_held():
            self._apply_snapshot(snap)
        self._schedule_full_gc()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._last_key = time.monotonic()
        await super().on_event(event)

    def _schedule_full_gc(self) -> None:
        """A full GC pass after this tick's frame, when it is due and the keyboard is quiet."""
        if self._gc_thresholds is None:
            return
        now = time.monotonic()
        since = now - self._gc_last
        if since >= GC_LATEST_S or (since >= GC_EVERY_S and now - self._last_key >= GC_QUIET_S):
            self._gc_last = now  # once per tick at most, even if the frame is slow to come
            self.call_after_refresh(self._full_gc)

    def _full_gc(self) -> None:
        self._gc_last = time.monotonic()
        gc.collect()

    def _apply_snapshot(self, snap: Snapshot) -> None:
        if self.snapshot is not None and snap.sources.bpf_state != self.snapshot.sources.bpf_state:
            # bcc/clang may have written diagnostics straight to the terminal while the
            # probes compiled: redraw every cell once they are live (or have failed).
            self.call_after_refresh(self.screen.refresh, repaint=True, layout=True)
        if self.bpf_live_since is None and snap.sources.bpf:
            self.bpf_live_since = snap.time
        self.history.add(snap)
        self.ticks_applied += 1
        if self.paused:
            # Pause freezes every number on screen (the header's netns line too): the tick is
            # kept, and shown on resume.
            self._paused_latest = snap
            if snap.connections is not None:
                self._paused_connections = snap
            self._held_events.extend(snap.events)
            del self._held_events[:-2000]
            self._refresh_header()
            return
        self._take(snap)
        self._show(snap, snap.events)

    def _take(self, snap: Snapshot) -> None:
        self.snapshot = snap
        if snap.connections is not None:
            self.connections = snap.connections
            self.connections_time = snap.time

    def _show(self, snap: Snapshot, events: Sequence[Transition]) -> None:
        """The visible screen gets the whole snapshot; screens under it only what they must
        not miss (the main screen's feed), and catch up on resume."""
        with self.batch_update():
            for screen in self.screen_stack:
                # Pushed but not composed yet (its on_mount shows self.snapshot), or being torn
                # down at exit (a SnapshotReady can still be queued behind the exit).
                if not screen.is_mounted or screen._closing:
                    continue
                if screen is self.screen:
                    apply = getattr(screen, "apply_snapshot", None)
                else:
                    apply = getattr(screen, "background_snapshot", None)
                if apply is not None:
                    apply(snap, events)

    def _refresh_header(self) -> None:
        refresh = getattr(self.screen, "refresh_header", None)
        if refresh is not None:
            refresh()

    def visible_listeners(self, snap: Snapshot | None = None) -> list[Listener]:
        """The listeners the main table shows: netns filter, text filter, sort."""
        snap = snap or self.snapshot
        if snap is None:
            return []
        terms = self.filter_text.lower().split()
        ns = self.netns_filter
        picked = [
            lst
            for lst in snap.listeners
            if (ns is None or lst.key.netns == ns) and listener_matches(lst, terms)
        ]
        if self.sort_key == SEVERITY:
            return self._by_severity(picked, snap.time)
        return sort_listeners(picked, self.sort_key, self.sort_reverse)

    def _by_severity(self, listeners: list[Listener], now: float) -> list[Listener]:
        """What is wrong now first (diagnosis.severity_rank), then overflow rate, drop rate, fill."""
        from tcptop_q.diagnosis import severity_rank

        hist = self.history
        base = sort_listeners(listeners, "overflow_rate")
        ranked = sorted(
            base, key=lambda lst: severity_rank(lst, hist.close_wait_growing(lst.key, now))
        )
        if self.sort_reverse:
            ranked.reverse()
        return ranked

    def listener(self, key: ListenerKey) -> Listener | None:
        if self.snapshot is None:
            return None
        for lst in self.snapshot.listeners:
            if lst.key == key:
                return lst
        return None

    # ------------------------------------------------------------ actions
    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            if self._paused_connections is not None:
                self._take(self._paused_connections)
            if self._paused_latest is not None:
                self._take(self._paused_latest)
            self._paused_latest = self._paused_connections = None
        if not self.paused and self.snapshot is not None:
            held, self._held_events = self._held_events, []
            self._show(self.snapshot, held)
        else:
            self._refresh_header()

    def action_replay_step(self, n: int) -> None:
        """Move a replay n ticks (clamped to the recording) and show that tick, paused or not."""
        self._replay_worker(n)

    @work(thread=True, exclusive=True, group="replay", exit_on_error=False)
    def _replay_worker(self, n: int) -> None:
        src = self.source
        if not isinstance(src, ReplayControl):
            return
        try:
            snap = src.step(n)
        except Exception as exc:
            self.post_message(CollectorFailed(f"{type(exc).__name__}: {exc}"))
            return
        self.call_from_thread(self._show_stepped, snap)

    def _show_stepped(self, snap: Snapshot) -> None:
        self.apply_snapshot(snap)
        if self.paused:  # a step is shown even while paused
            self._paused_latest = self._paused_connections = None
            self._held_events = []
            self._take(snap)
            self._show(snap, snap.events)

    def action_interval(self, step: int) -> None:
        if self.replaying and hasattr(self.source, "faster"):
            src: Any = self.source
            speed = src.faster() if step < 0 else src.slower()
            self._wake.set()
            self._refresh_header()
            self.notify(f"replay at {speed:g}x", timeout=1.5)
            return
        current = float(self.source.interval)
        idx = min(range(len(INTERVALS)), key=lambda i: abs(INTERVALS[i] - current))
        new = INTERVALS[max(0, min(len(INTERVALS) - 1, idx + step))]
        self.source.interval = new
        self._wake.set()
        self._refresh_header()
        self.notify(f"sampling every {new:g}s", timeout=1.5)

    def action_help(self) -> None:
        from tcptop_q.screens.modals import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_close_wait(self) -> None:
        from tcptop_q.screens.closewait import CloseWaitScreen

        if not isinstance(self.screen, CloseWaitScreen):
            self.push_screen(CloseWaitScreen())

    def open_listener(self, key: ListenerKey) -> None:
        from tcptop_q.screens.listener import ListenerScreen

        self.push_screen(ListenerScreen(key))

    def open_socket(self, ref: SocketRef) -> None:
        from tcptop_q.screens.socket import SocketScreen

        self.push_screen(SocketScreen(ref))

    def export_screen(self, directory: str | None = None) -> tuple[str, str]:
        """Write the screen as SVG and as plain text; returns both paths. Where: `directory`,
        else $TCPQ_EXPORT_DIR, else the working directory, else /tmp when that is not writable."""
        base = f"tcpq-top-{time.strftime('%Y%m%d-%H%M%S')}"
        candidates = [d for d in (directory, os.environ.get("TCPQ_EXPORT_DIR"), os.getcwd(), "/tmp") if d]
        where = next((d for d in candidates if os.path.isdir(d) and os.access(d, os.W_OK)), None)
        if where is None:
            raise OSError(f"no writable directory among {', '.join(candidates)}")
        svg_path = os.path.join(where, base + ".svg")
        txt_path = os.path.join(where, base + ".txt")
        strips = self.screen._compositor.render_strips()
        text = "\n".join("".join(seg.text for seg in strip).rstrip() for strip in strips)
        with open(svg_path, "w", encoding="utf-8") as f:
            f.write(self.export_screenshot(title=f"tcpq-top {time.strftime('%Y-%m-%d %H:%M:%S')}"))
        with open(txt_path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        return svg_path, txt_path

    def action_export(self) -> None:
        try:
            svg, txt = self.export_screen()
        except OSError as exc:
            self.notify(f"cannot save the screen: {exc}", title="Export", severity="error", timeout=8)
            return
        self.notify(f"saved {svg} and {txt}", title="Export", timeout=8)

    def selected_listener(self) -> Listener | None:
        key = getattr(self.screen, "key", None)
        if not isinstance(key, ListenerKey):
            table = getattr(self.screen, "table", None)
            key = table.listener_at_cursor() if table is not None else None
        return self.listener(key) if key is not None else None

    def action_copy_commands(self) -> None:
        """Copy (OSC 52) the matching ss / nsenter / nstat command, or the row as JSON."""
        import json

        from tcptop_q.diagnosis import next_commands
        from tcptop_q.model import listener_to_json
        from tcptop_q.screens.modals import CopyPicker

        lst = self.selected_listener()
        if lst is None:
            self.notify("no listener selected", title="Copy", severity="warning")
            return
        choices = [*next_commands(lst), ("the row as JSON", json.dumps(listener_to_json(lst)))]

        def picked(text: str | None) -> None:
            if text:
                self.copy_to_clipboard(text)
                self.notify(f"copied (OSC 52): {text[:100]}", title="Copy", timeout=6)

        self.push_screen(CopyPicker(choices), picked)

    def action_signal_owner(self) -> None:
        """htop's kill: a signal to the selected listener's owner, after a confirmation that
        names the pid and its cmdline (read off the UI thread)."""
        lst = self.selected_listener()
        if self.replaying:
            self.notify("a replay shows recorded processes: nothing to signal", title="Signal", severity="warning")
            return
        if lst is None or lst.pid is None:
            self.notify("no owner process known for this row", title="Signal", severity="warning")
            return
        self._confirm_signal(lst.pid, lst.comm)

    @work(thread=True, exclusive=True, group="signal", exit_on_error=False)
    def _confirm_signal(self, pid: int, comm: str | None) -> None:
        try:
            info = self.source.process_info(pid)
        except Exception:
            info = None
        cmd = (info or {}).get("cmdline")
        if isinstance(cmd, (list, tuple)):
            cmd = " ".join(str(c) for c in cmd)
        self.call_from_thread(self._ask_signal, pid, cmd or comm or "?")

    def _ask_signal(self, pid: int, cmdline: str) -> None:
        from tcptop_q.screens.modals import SignalConfirm

        def picked(signum: int | None) -> None:
            if signum is None:
                return
            name = signal.Signals(signum).name
            try:
                os.kill(pid, signum)
            except OSError as exc:
                self.notify(f"{name} to pid {pid}: {exc.strerror or exc}", title="Signal", severity="error")
                return
            self.notify(f"sent {name} to pid {pid}", title="Signal", timeout=5)

        self.push_screen(SignalConfirm(pid, cmdline), picked)

    def action_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        self.action_export()  # Textual's palette "Screenshot": the same export, with its paths

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for cmd in super().get_system_commands(screen):
            if cmd.title == "Screenshot":
                cmd = SystemCommand("Screenshot", "Save the screen as SVG and text (prints the paths)",
                                    self.action_export)
            yield cmd
        scopes = {"app", *getattr(screen, "KEY_SCOPES", ())}
        for k in keycat.CATALOGUE:
            if k.scope not in scopes or not k.palette or k.id == "app.quit":
                continue
            if keycat.replay_only(k) and not self.replaying:
                continue  # live mode offers no replay keys
            target = self if k.action.startswith("app.") else screen
            action = k.action.removeprefix("app.")
            shown = k.key_display or k.keys.split(",")[0]
            yield SystemCommand(
                k.description, f"key: {shown}", partial(self.call_later, self.run_action, action, target)
            )
