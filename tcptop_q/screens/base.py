"""Shared parts of the drill-down screens: back key, header, owner-process worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from textual import work
from textual.screen import Screen
from textual.widgets import Static

from tcptop_q.model import Snapshot, Transition
from tcptop_q.screens import keys as keycat
from tcptop_q.widgets.process import process_text
from tcptop_q.widgets.topbar import TopBar

if TYPE_CHECKING:
    from tcptop_q.app import TcpqTopApp


class DetailScreen(Screen):
    BINDINGS = keycat.bindings("detail")
    KEY_SCOPES: tuple[str, ...] = ("detail",)

    def __init__(self) -> None:
        super().__init__()
        self.process_pid: int | None = None
        self.process_info: dict[str, Any] | None = None
        self.process_loaded = False

    @property
    def tapp(self) -> TcpqTopApp:
        return cast("TcpqTopApp", self.app)

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_drill(self) -> None:  # screens with a table override
        pass

    def refresh_header(self) -> None:
        app = self.tapp
        for bar in self.query(TopBar):
            bar.show(app.snapshot, interval=float(app.source.interval), now=app.clock(), paused=app.paused,
                     mode=app.mode_badge(), replaying=app.replaying)

    def apply_snapshot(self, snap: Snapshot, events: Sequence[Transition]) -> None:
        self.refresh_header()
        self.refresh_data()
        if self.process_pid is not None and self.process_loaded:
            self._read_process(self.process_pid)  # CPU%, RSS, fds move: re-read each tick, off-thread

    def refresh_data(self) -> None:
        pass

    def on_screen_resume(self) -> None:
        self.refresh_header()
        self.refresh_data()

    # ------------------------------------------------------------ owner process
    def load_process(self, pid: int | None) -> None:
        if pid != self.process_pid:
            self.process_pid = pid
            self.process_info = None
            self.process_loaded = pid is None
        self._show_process()
        if pid is not None:
            self._read_process(pid)

    @work(thread=True, exclusive=True, group="process", exit_on_error=False)
    def _read_process(self, pid: int) -> None:
        try:
            info = self.tapp.source.process_info(pid)
        except Exception:  # the process vanished or is not ours: show it as gone
            info = None
        self.app.call_from_thread(self._process_read, pid, info)

    def _process_read(self, pid: int, info: dict[str, Any] | None) -> None:
        if pid != self.process_pid or not self.is_attached:
            return
        self.process_info, self.process_loaded = info, True
        self._show_process()

    def _show_process(self) -> None:
        for panel in self.query("#process").results(Static):
            panel.update(
                process_text(
                    self.process_pid,
                    self.process_info,
                    now=self.tapp.clock(),
                    loading=not self.process_loaded,
                )
            )
