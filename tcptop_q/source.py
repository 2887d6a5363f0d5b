"""The live snapshot source: sampler + BPF probes + psutil, behind one small interface.

The TUI, `--once` and `--batch` all read through this. It never imports textual.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from .model import BpfReading, Snapshot, Transition
from .sampler import Sampler

# ------------------------------------------------------------------ the source contracts
# What the UI, --once and --batch may call, declared once: a misspelt call fails mypy instead
# of quietly turning a feature off (docs/ARCHITECTURE.md, "Threads").


class SnapshotSource(Protocol):
    """Every source: LiveSource, RecordingSource, ReplaySource, the UI tests' FakeSource."""

    interval: float  # seconds; the app may change it (+/- keys)

    def sample(self) -> Snapshot:
        """Blocking; called only from the App's collector thread, once per interval."""
        ...

    def timeline(
        self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int
    ) -> list[Transition]: ...

    def process_info(self, pid: int) -> dict | None:
        """psutil oneshot data; called from a worker thread, never the UI thread."""
        ...

    def netns_sysctls(self, netns: int) -> dict[str, int]: ...

    def close(self) -> None: ...


@runtime_checkable
class ReplayControl(Protocol):
    """A recording that can be stepped (record.ReplaySource)."""

    @property
    def at_end(self) -> bool: ...

    def step(self, n: int = 1) -> Snapshot: ...

    def describe(self) -> str: ...


@runtime_checkable
class FeedFocus(Protocol):
    """A live source whose feed can follow the port the user looks at (LiveSource)."""

    def focus_port(self, port: int | None) -> None: ...


class BpfControl(Protocol):
    """What the live source and the sampler use of the probes (probes/bpf.py BpfProbes)."""

    state: str  # "off" | "loading" | "live"
    error: str | None
    hooks: dict[str, str]  # metric -> hook serving it

    def program_text(self) -> str: ...

    def start(self) -> None: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def read(self) -> BpfReading: ...

    def set_feed(self, mode: str = "all", port: int | None = None) -> None: ...

    def set_children(self, enabled: bool) -> None: ...

    def drop_metrics(self, metrics: set[str]) -> None: ...

    def timeline(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> list[Transition]: ...

    def close(self) -> None: ...


def load_bpf(port: int | None, netns: int | None, accept_hook: str | None = None,
             tracepoints: str | None = None) -> tuple[BpfControl | None, str | None]:
    """Create (not yet start) the BPF probes, or say in one line why there are none."""
    try:
        from .probes.bpf import BpfProbes
    except Exception as exc:  # bcc missing, or the module failed to import
        return None, f"BPF probes unavailable: {type(exc).__name__}: {exc}".splitlines()[0]
    try:
        return BpfProbes(port=port, netns=netns, accept_hook=accept_hook, tracepoints=tracepoints), None
    except Exception as exc:
        return None, f"BPF probes unavailable: {exc}".splitlines()[0]


class Filters:
    def __init__(self, port: int | None = None, pid: int | None = None, netns: int | None = None) -> None:
        self.port = port
        self.pid = pid
        self.netns = netns

    def apply(self, snap: Snapshot) -> Snapshot:
        if self.port is None and self.pid is None and self.netns is None:
            return snap

        def keep(netns: int, port: int, pid: int | None) -> bool:
            return (
                (self.port is None or port == self.port)
                and (self.pid is None or pid == self.pid)
                and (self.netns is None or netns == self.netns)
            )

        # --pid: a listener any of whose holders is that process (a pre-fork worker's too).
        listeners = [
            lst for lst in snap.listeners
            if keep(lst.netns, lst.lport, self.pid if self.pid in (lst.holders or ()) else lst.pid)
        ]
        kept = {lst.key for lst in listeners}
        return replace(
            snap,
            listeners=listeners,
            close_wait=[cw for cw in snap.close_wait if keep(cw.netns, cw.lport, cw.pid)],
            netns=[ns for ns in snap.netns if self.netns is None or ns.inode == self.netns],
            events=tuple(
                ev for ev in snap.events
                if (self.netns is None or ev.netns == self.netns) and (self.port is None or self.port in (ev.lport, ev.rport))
            ),
            connections=(
                {k: v for k, v in snap.connections.items() if k in kept} if snap.connections is not None else None
            ),
        )


class LiveSource:
    """Implements the app's SnapshotSource over the real kernel."""

    def __init__(
        self,
        *,
        interval: float = 1.0,
        filters: Filters | None = None,
        use_bpf: bool = True,
        blocking_owners: bool = False,
        feed: bool = True,
        keep_connections: bool = True,
        accept_hook: str | None = None,
        tracepoints: str | None = None,
    ) -> None:
        self.interval = interval
        self.filters = filters or Filters()
        self.bpf: BpfControl | None = None
        self.bpf_error: str | None = None
        if use_bpf:
            # The probes' own preflight checks capabilities (CAP_BPF+CAP_PERFMON), not the uid.
            self.bpf, self.bpf_error = load_bpf(self.filters.port, self.filters.netns, accept_hook, tracepoints)
        else:
            self.bpf_error = "BPF off: --no-bpf"
        self._sampler: Sampler | None = None
        self._blocking_owners = blocking_owners
        self._keep_connections = keep_connections
        self._last: Snapshot | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._sampling = threading.Lock()  # close() waits for a sample in flight
        self._procs: dict[int, Any] = {}  # psutil.Process per pid: cpu_percent needs the previous call
        self._procs_lock = threading.Lock()  # workers and the collector (recording) both ask
        self.feed = feed  # False: nothing shows transitions; the kernel need not send them
        self._bpf_started = False
        self._bpf_deferred: float | None = None
        # Feed mode: changed on the collector thread only. focus_port() (any thread) queues the
        # request; sample() applies it before it reads.
        self._focus: int | None = None
        self._focus_requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._feed_off_until: float | None = None
        self._lost_before = 0

    def start_bpf(self) -> None:
        if self.bpf is not None and not self._bpf_started:
            self._bpf_started = True
            self.bpf.start()

    def start_bpf_after_first_frame(self, delay: float = 0.4) -> None:
        """For the TUI: compiling the probes takes a core for a second or more; let the first
        sample and the first frame go first, then load them in the background."""
        self._bpf_deferred = delay

    def wait_bpf(self, timeout: float = 60.0) -> bool:
        if self.bpf is None:
            return False
        live = bool(self.bpf.wait_ready(timeout))
        if live and not self.feed:
            # Every counter stays exact without the feed; children by state then come
            # from the sampler's own sock_diag dumps alone.
            self.bpf.set_feed("off")
            self.bpf.set_children(False)
            # Nothing without the feed shows resets (the text report has no column).
            self.bpf.drop_metrics({"resets_sent", "resets_received"})
        return live

    @property
    def sampler(self) -> Sampler:
        # Created on first use so that it lives on the thread that samples (setns is per thread).
        if self._sampler is None:
            self._sampler = Sampler(bpf=self.bpf, netns=self.filters.netns, blocking_owners=self._blocking_owners,
                                    keep_connections=self._keep_connections)
        return self._sampler

    def sample(self, children: bool | None = None) -> Snapshot:
        with self._sampling:
            if self._closed:
                raise RuntimeError("source closed")
            self._take_focus_requests()
            snap = self.sampler.sample(self.interval, children=children)
        return self._finish(snap)

    def _finish(self, snap: Snapshot) -> Snapshot:
        if self.bpf is not None and not self._bpf_started and self._bpf_deferred is not None:
            snap = replace(snap, sources=replace(snap.sources, bpf_state="loading"))
            timer = threading.Timer(self._bpf_deferred, self.start_bpf)
            timer.daemon = True
            timer.start()
            self._bpf_deferred = None
        if self.bpf is None and self.bpf_error:
            snap = replace(snap, sources=replace(snap.sources, bpf_error=self.bpf_error))
        notes = self._feed_policy(snap)
        if notes:
            snap = replace(snap, sources=replace(snap.sources, notes=(*snap.sources.notes, *notes)))
        snap = self.filters.apply(snap)
        self._last = snap
        return snap

    # -- the feed: every transition while that is cheap, only what the user looks at when not.
    FEED_MAX_RATE = 20000.0  # transitions/s the feed carries before it narrows itself
    FEED_RETRY_S = 30.0

    def focus_port(self, port: int | None) -> None:
        """The listening port the user is looking at (None: none). While the feed is paused
        for overload, that port's transitions still come through, so its timelines stay live.
        Any thread; takes effect on the collector thread at the next sample."""
        self._focus_requests.put(port)

    def _take_focus_requests(self) -> None:
        """Collector thread: apply the latest focus request, if any."""
        changed = False
        while True:
            try:
                self._focus = self._focus_requests.get_nowait()
            except queue.Empty:
                break
            changed = True
        if changed:
            self._apply_feed()

    def _apply_feed(self) -> None:
        if self.bpf is None or self.bpf.state != "live":
            return
        if self._feed_off_until is None:
            self.bpf.set_feed("all")
        elif self._focus is not None:  # overloaded: keep what the user is looking at
            self.bpf.set_feed("port", self._focus)
        else:
            self.bpf.set_feed("off")

    def _feed_policy(self, snap: Snapshot) -> list[str]:
        if self.bpf is None or snap.sources.bpf_state != "live":
            return []
        lost = snap.sources.lost_events - self._lost_before
        self._lost_before = snap.sources.lost_events
        now = time.monotonic()
        if self._feed_off_until is not None:
            if now < self._feed_off_until:
                return [f"feed paused: more than {self.FEED_MAX_RATE:.0f} transitions/s; counts stay exact; "
                        "open a listener to follow its port"]
            self._feed_off_until = None
            self._apply_feed()
            return []
        rate = (len(snap.events) + max(0, lost)) / snap.interval if snap.interval else 0.0
        if rate > self.FEED_MAX_RATE:
            self._feed_off_until = now + self.FEED_RETRY_S
            self._apply_feed()
            return [f"feed paused at {rate:.0f} transitions/s; counts stay exact"]
        return []

    def timeline(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> list[Transition]:
        if self.bpf is None or self.bpf.state != "live":
            return []
        return list(self.bpf.timeline(netns, family, laddr, lport, raddr, rport))

    def netns_sysctls(self, netns: int) -> dict[str, int]:
        if self._last is None:
            return {}
        for ns in self._last.netns:
            if ns.inode == netns:
                return dict(ns.sysctls)
        return {}

    def process_info(self, pid: int) -> dict | None:
        import psutil

        with self._procs_lock:  # a psutil.Process keeps state between calls: one thread at a time
            proc = self._procs.get(pid)
            if proc is None:
                try:
                    proc = self._procs[pid] = psutil.Process(pid)
                except psutil.Error:
                    return process_info(pid)
                if len(self._procs) > 64:
                    self._procs.pop(next(iter(self._procs)))
            return process_info(pid, proc)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._bpf_started = True  # a deferred start that fires now does nothing
        if self.bpf is not None:
            self.bpf.close()  # first, whatever else happens
        # The sampler's fds may be in use by a sample in flight on the collector thread.
        if self._sampling.acquire(timeout=5.0):
            try:
                if self._sampler is not None:
                    self._sampler.close()
            finally:
                self._sampling.release()


def process_info(pid: int, proc: Any = None) -> dict | None:
    """psutil facts about one process; None when it is gone. Pass the same psutil.Process
    each time for a meaningful CPU% (psutil measures it since the previous call)."""
    import psutil

    try:
        proc = proc if proc is not None else psutil.Process(pid)
        with proc.oneshot():
            info: dict[str, Any] = {"pid": pid, "name": proc.name(), "ppid": proc.ppid(), "status": proc.status()}
            for field, getter in (
                ("user", proc.username),
                ("cmdline", lambda: " ".join(proc.cmdline())),
                ("started", proc.create_time),
                ("threads", proc.num_threads),
                ("fds", proc.num_fds),
                ("cpu_percent", lambda: proc.cpu_percent(interval=None)),
                ("rss", lambda: proc.memory_info().rss),
            ):
                try:
                    info[field] = getter()
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    info[field] = None
        return info
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return {"pid": pid, "error": "access denied"}

