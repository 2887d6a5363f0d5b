"""The eBPF probes: per-listener counters in kernel maps and a bounded transition feed.

BpfProbes is the façade the rest of tcpq-top uses; the work is done by:

    plan.py       which hook serves which metric on this kernel, the program text
    layout.py     tq_ctl slots, struct tq_event, histogram geometry: one definition for C and Python
    loader.py     compile and attach with bcc; preflight checks
    controls.py   what user space writes into the running programs (feed mode, ...)
    decode.py     map contents and feed records -> model records
    timelines.py  per-socket history built from the feed
    hist.py       quantiles from the kernel's latency histograms

What each hook serves (chosen at start from the tracefs format files):

    sock:inet_sock_set_state   transitions (feed, timelines, connection ages)
    sock:sk_data_ready         queued, peak_accept_queue, handshake, and the child ->
                               listener link (filtered to LISTEN in BPF)
                               fallback: kprobe:sock_def_readable where kprobes exist
    syscalls:sys_exit_accept4, accepted, accept_wait (the returned fd resolved to its
    syscalls:sys_exit_accept   socket); kretprobe:inet_csk_accept where kprobes exist
    skb:kfree_skb (rx_sk)      listen_overflow_drops (reason TCP_LISTEN_OVERFLOW),
                               other_rx_drops, drop_reasons; fallback for the overflows
                               only: kprobes on tcp_v{4,6}_syn_recv_sock (+ syn_overflows
                               from tcp_conn_request); see probes/kprobes.py
    tcp:tcp_retransmit_synack  synack_retrans
    tcp:tcp_send_reset         resets_sent      (a child's resets go to its port's listener)
    tcp:tcp_receive_reset      resets_received

Each tracepoint except the syscall exits is attached raw (BPF_PROG_TYPE_RAW_TRACEPOINT:
no trace-event record is built) where the kernel's BTF prototype allows, with the classic
program as the fallback (probes/plan.py RAW_TRACEPOINTS, probes/loader.py attach_all);
`tracepoints="classic"` uses classic ones only. Hot counters are per-CPU copies summed here.

A metric whose hook is missing is absent from `hooks` (the sampler reports null)
and the reason is in `notes`. The feed (ring buffer, perf buffer before 5.8)
carries every transition unless limited with set_feed("off" | "port", port).
Nothing here imports textual, and no method raises to the caller: failures end
in state "off" with a one-line `error`.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import threading
import time
from collections.abc import Callable

from ..model import BpfListenerCounts, BpfReading, ListenerKey, Transition
from . import controls, decode, layout, loader, synq
from .plan import (  # noqa: F401  (re-exported: the names tests and tools use)
    BPF_C,
    MAX_LISTENERS,
    TRANSITIONS,
    Plan,
    ProbeError,
    build_plan,
    c_struct,
    one_line,
)
from .timelines import Timelines


class BpfProbes:
    """Loads in a background thread; read() once per tick from the collector thread."""

    def __init__(
        self, port: int | None = None, netns: int | None = None, feed_capacity: int = 4096, ringbuf: bool | None = None,
        accept_hook: str | None = None, tracepoints: str | None = None,
    ) -> None:
        self.port = port
        self.accept_hook = accept_hook  # None: chosen from the kernel; "kretprobe" | "syscall" forces one
        self.tracepoints = tracepoints  # None: raw tracepoints where the kernel has them; "classic" never
        self.ringbuf = ringbuf  # None: BPF ring buffer where the kernel has one, else perf buffer
        self.netns = netns
        self.feed_capacity = max(16, int(feed_capacity))
        self.state = "off"
        self.error: str | None = "not started"
        self.hooks: dict[str, str] = {}
        self.notes: list[str] = []
        self.live_since = 0.0
        self.load_seconds: float | None = None
        self.timings: dict[str, float] = {}  # load phases, seconds: plan, compile, attach
        self._plan: Plan | None = None
        self._bpf = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._closed = False
        self._lock = threading.RLock()  # guards _bpf and map access; re-entrant for signal handlers
        self._pending: collections.deque[bytes] = collections.deque()
        self._user_lost = 0
        self._epoch = 0
        self._reasons: dict[int, str] = {}
        self._mono_to_unix = 0.0
        self.timelines = Timelines()
        self._atexit_registered = False
        self._cb: Callable | None = None
        self._child_deltas: dict[tuple[int, int], dict[str, int]] = {}
        self._listener_child_deltas: dict[tuple[int, int], dict[str, int]] = {}
        self._feed_slots = controls.feed_slots("all", None)
        self._feed_gen = 0
        self._reader: int | None = None  # thread inside read(), if any
        self._uncounted = 0
        self._inodes: dict[int, tuple[int, int]] = {}
        self._source_error: str | None = None
        self._synq: synq.SynqIter | None = None  # the tcp iterator (probes/synq.py), compiled on the loader thread before live
        self.synq_error: str | None = "not loaded"  # why _synq is None

    # ---- lifecycle

    def start(self) -> None:
        if self._thread is not None or self._closed:
            return
        self.state = "loading"
        self.error = None
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True
        # Process-global, so set here, on the starting thread, before the loader exists.
        self._source_error = loader.kernel_source_env()
        self._thread = threading.Thread(target=self._load, name="tcpq-bpf-load", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.state == "live"

    def _fail(self, reason: str) -> None:
        self.state = "off"
        self.error = reason
        self.hooks = {}
        self._ready.set()

    def _load(self) -> None:
        t0 = time.monotonic()
        try:
            bcc = loader.import_bcc()
            loader.preflight()
            t_plan = time.monotonic()
            plan = build_plan(self.port, self.netns, self.feed_capacity, ringbuf=self.ringbuf,
                              accept_hook=self.accept_hook, tracepoints=self.tracepoints)
            self._plan = plan
            self.timings["plan"] = time.monotonic() - t_plan
            if self._source_error:
                raise ProbeError(self._source_error)
            t_compile = time.monotonic()
            b = loader.compile_plan(bcc, plan)
            # Held until the probes are attached and the feed is open: a close() meanwhile
            # waits rather than cleaning bcc up under the attach calls.
            # The tcp iterator before going live: nothing of bcc runs on this thread after that
            # (a compile still running while the process exits crashed it).
            it = self._load_synq(bcc)
            with self._lock:
                self._synq = it
                self._attach(b, plan, t0, t_compile)
        except ProbeError as exc:
            self._teardown()
            self._fail(str(exc))
        except Exception as exc:  # never a traceback to the UI
            self._teardown()
            self._fail(f"BPF: {one_line(exc)}")

    def _attach(self, b, plan: Plan, t0: float, t_compile: float) -> None:
        """Attach every planned hook and open the feed; called with self._lock held."""
        if self._closed:
            self._bpf = b
            self._teardown()  # the tcp iterator too
            return
        self._bpf = b
        t_attach = time.monotonic()
        self.timings["compile"] = t_attach - t_compile
        hooks, failures = loader.attach_all(b, plan)
        self._reasons = dict(plan.reasons)
        controls.set_ctl(b, layout.CTL_FEED_MODE, layout.FEED_ALL)
        self._mono_to_unix = time.time() - time.monotonic()
        if TRANSITIONS in hooks:
            if plan.ringbuf:
                self._cb = self._on_ring_event
                b[b"tq_feed"].open_ring_buffer(self._cb)
            else:
                self._cb = self._on_perf_event
                b[b"tq_feed"].open_perf_buffer(self._cb, page_cnt=plan.feed_pages, lost_cb=self._on_perf_lost)
        if self._closed:
            self._teardown()
            return
        if self._synq is not None:
            hooks[synq.METRIC] = synq.HOOK
        self.hooks = hooks
        self.notes = plan.notes + failures
        self.live_since = time.time()
        self.load_seconds = time.monotonic() - t0
        self.timings["attach"] = time.monotonic() - t_attach
        self.state = "live"
        self.error = None
        self._ready.set()

    def _load_synq(self, bcc) -> synq.SynqIter | None:
        """The tcp iterator (probes/synq.py): the SYN queue of each SO_REUSEPORT member. Its
        failure leaves the probes as they are: None, with the reason in `synq_error`."""
        from .btf import Btf

        if self._closed:
            return None
        self.synq_error = "loading"
        try:
            it = synq.SynqIter(bcc, Btf.vmlinux())
        except synq.SynqError as exc:
            self.synq_error = str(exc)
            return None
        except Exception as exc:
            self.synq_error = f"tcp iterator: {one_line(exc)}"
            return None
        self.synq_error = None
        return it

    def synq_walk(self) -> synq.Walk | None:
        """One walk of the tcp iterator over the calling thread's netns (the sampler calls it
        inside each netns that has a SO_REUSEPORT group); None if the iterator is not loaded
        (`synq_error` says why) or the walk failed (then it is unloaded, with the reason)."""
        if self.state != "live" or self._synq is None:
            return None
        with self._lock:
            it = self._synq
            if it is None or self._closed:
                return None
            try:
                return it.walk()
            except OSError as exc:
                self._synq = None
                it.close()
                self.synq_error = f"tcp iterator failed: {exc.strerror or exc}"
                self.hooks = {k: v for k, v in self.hooks.items() if k != synq.METRIC}
                return None

    def close(self) -> None:
        """Detach everything. Idempotent; safe from atexit and signal handlers."""
        self._closed = True
        if self._reader == threading.get_ident():
            # A signal handler interrupted read() on this thread: tearing bcc down under it
            # could crash; read() finishes the job on its way out (also when the handler exits).
            self.state = "off"
            self.error = "closed"
            return
        got = self._lock.acquire(timeout=5.0)
        if got:
            try:
                self._teardown()
            finally:
                self._lock.release()
        # else: the loader or a read() holds bcc right now; tearing it down under them could
        # crash bcc. Both check _closed when they let go and tear down themselves.
        if self.state != "off":
            self.state = "off"
            self.error = "closed"
        self._ready.set()

    def _teardown(self) -> None:
        it, self._synq = self._synq, None
        if it is not None:
            it.close()
        b, self._bpf = self._bpf, None
        if b is not None:
            try:
                b.cleanup()
            except Exception:
                pass

    # ---- control (probes/controls.py)

    def drop_metrics(self, metrics: set[str]) -> None:
        """Detach the hooks that serve only `metrics` (a view that never shows them): at
        storm rates every program run costs. Those metrics disappear from `hooks`, so they
        read as unknown (null), never as zero."""
        with self._lock:
            b = self._bpf
            if b is None or self._plan is None:
                return
            for kind, target in controls.detachable(self._plan.attach, self.hooks, metrics):
                try:
                    loader.detach_one(b, kind, target)
                except Exception as exc:
                    self.notes.append(f"detach {kind}:{target} failed: {one_line(exc)}")
                    continue
                self.hooks = controls.without_hook(self.hooks, kind, target)

    def set_children(self, enabled: bool) -> None:
        """Count children's state changes per listening port in the kernel (child_deltas), or
        not: a view that only needs the periodic sock_diag dump saves two hash operations
        per transition. Set once, before the first read: turning it back on mid-way would
        make the deltas miss the changes made while it was off."""
        with self._lock:
            controls.set_ctl(self._bpf, *controls.children_slot(enabled))

    def set_feed(self, mode: str = "all", port: int | None = None) -> None:
        """Limit the feed in the kernel: "off", "all", or "port" (events whose either port is `port`).

        Counters stay exact whatever the feed does; timelines are built from the feed.
        """
        with self._lock:
            slots = controls.feed_slots(mode, port)
            if slots != self._feed_slots:
                # First a new generation: state-entry times taken before this change belong to
                # sockets whose later changes (or close, and a new socket at the address) the
                # feed may not have seen; the programs treat them as unknown.
                self._feed_gen += 1
                controls.set_ctl(self._bpf, layout.CTL_FEED_GEN, self._feed_gen)
                self._feed_slots = slots
            for slot, value in slots:
                controls.set_ctl(self._bpf, slot, value)

    # ---- feed

    def _on_ring_event(self, _ctx, data, size) -> int:
        if len(self._pending) >= self.feed_capacity:
            self._user_lost += 1
        else:
            self._pending.append(ctypes.string_at(data, layout.EVENT_SIZE))
        return 0

    def _on_perf_event(self, _cpu, data, size) -> None:
        self._on_ring_event(None, data, size)

    def _on_perf_lost(self, lost) -> None:
        self._user_lost += int(lost)

    def _decode(self, raw: bytes) -> Transition:
        return decode.event(raw, self._mono_to_unix)

    # ---- reading

    def _empty(self) -> BpfReading:
        return BpfReading(listeners={}, events=(), lost_events=0, live_since=0.0, hooks={})

    def read(self) -> BpfReading:
        if self.state != "live":
            return self._empty()
        with self._lock:
            b = self._bpf
            if b is None:
                return self._empty()
            self._reader = threading.get_ident()
            try:
                return self._read(b)
            except Exception as exc:
                # A map read failing means the programs are gone: say so once, stop.
                self._teardown()
                self._fail(f"BPF read failed: {one_line(exc)}")
                return self._empty()
            finally:
                self._reader = None
                if self._closed:  # close() came from a signal handler that interrupted us
                    self._teardown()

    def _read(self, b) -> BpfReading:
        # Peaks: switch the kernel to a new interval first, then collect the one that ended
        # (kept in the listener entries themselves: no map update per tick).
        self._epoch += 1
        controls.set_ctl(b, layout.CTL_EPOCH, self._epoch)
        rtbl, htbl = b[b"tq_reasons"], b[b"tq_hist"]
        # Read before the listeners: entries of listeners that closed are deleted below
        # (each was created after its listener's entry, and both were read in that order).
        reason_items = decode.items(rtbl)
        hists_on = "accept_wait" in self.hooks or "handshake" in self.hooks
        hist_items = decode.items(htbl) if hists_on else []
        mtbl = b[b"tq_hist_max"] if hists_on else None
        max_items = decode.items(mtbl) if mtbl is not None else []
        listeners, by_inode, live, live_ports, inodes = self._read_listeners(b, reason_items, hist_items,
                                                                               max_items)
        if TRANSITIONS in self.hooks:
            self._child_deltas, self._listener_child_deltas = decode.child_states(
                b[b"tq_child_states"], live_ports, live, inodes, b[b"tq_child_pcpu"])
        self._inodes = inodes
        for k, _v in reason_items:  # a listener closed, or another one now at its address
            if live.get(k.sk) != k.born_ns:
                decode.delete(rtbl, k)
        for k, _v in hist_items:  # a listener closed, or another one now at its address
            if live.get(k.sk) != k.born_ns:
                decode.delete(htbl, k)
        for k, _v in max_items:
            if live.get(k.sk) != k.born_ns:
                decode.delete(mtbl, k)
        events = self._drain_feed(b)
        return BpfReading(
            listeners=listeners,
            events=tuple(events),
            lost_events=self._lost(b),
            live_since=self.live_since,
            hooks=dict(self.hooks),
            by_inode=by_inode,
        )

    def _read_listeners(self, b, reason_items: list, hist_items: list, max_items: list | None = None):
        """Counts per listener socket: by ListenerKey (with its cookie), and by (netns, inode)
        for the rows of listeners the kernel had no cookie for when the probes first saw
        them (reuseport members opened after start). Entries are never summed: two
        entries are two sockets (docs/ARCHITECTURE.md, identity)."""
        reasons = decode.reasons(reason_items, self._reasons)
        hists = decode.histograms(hist_items)
        maxima = decode.hist_maxima(max_items or [])
        listeners: dict[ListenerKey, BpfListenerCounts] = {}
        by_inode: dict[tuple[int, int], BpfListenerCounts] = {}
        ambiguous: set[ListenerKey] = set()
        live: dict[int, int] = {}  # listener sk -> born_ns
        inodes: dict[int, tuple[int, int]] = {}  # listener sk -> (netns, inode)
        live_ports: set[tuple[int, int]] = set()
        # Per-CPU copies first: each is created after its listener's shared entry, so a copy
        # whose listener is not in the (later) read of tq_listeners belongs to a closed one.
        ptbl = b[b"tq_pcpu"]
        pcpu = {decode.as_int(k): v for k, v in decode.per_cpu(ptbl).items()}
        for k, v0 in decode.items(b[b"tq_listeners"]):
            sk = decode.as_int(k)
            copies = pcpu.get(sk, [])
            peak = decode.peak_of([v0, *(c for c in copies if c.born_ns == v0.born_ns)], self._epoch - 1)
            v = decode.summed(v0, copies)
            live[sk] = int(v.born_ns)
            live_ports.add((v.netns, v.lport))
            key = decode.listener_key(v)
            counts = decode.listener_counts(v, sk, self.hooks, peak, reasons.get((sk, int(v.born_ns)), {}), hists,
                                            maxima)
            if v.inode:
                inodes[sk] = (int(v.netns), int(v.inode))
                by_inode[inodes[sk]] = counts
            if key in listeners:  # two sockets without a cookie on one address: no tuple join
                ambiguous.add(key)
            listeners[key] = counts
        for key in ambiguous:
            del listeners[key]
        for sk in pcpu.keys() - live.keys():
            decode.delete(ptbl, ctypes.c_ulonglong(sk))
        return listeners, by_inode, live, live_ports, inodes

    def _drain_feed(self, b) -> list[Transition]:
        """Feed events since the last read: bounded by the ring size and feed_capacity."""
        if TRANSITIONS in self.hooks:
            if self._plan is not None and self._plan.ringbuf:
                b.ring_buffer_consume()
            else:
                b.perf_buffer_poll(timeout=0)
        # bpf_ktime_get_ns() is CLOCK_MONOTONIC: re-anchor to the wall clock each read (NTP steps).
        self._mono_to_unix = time.time() - time.monotonic()
        events = []
        while self._pending:
            tr = self._decode(self._pending.popleft())
            self.timelines.add(tr)
            events.append(tr)
        return events

    def _lost(self, b) -> int:
        kernel_lost, uncounted = decode.lost(b[b"tq_lost"])
        if uncounted and uncounted != self._uncounted:
            self._uncounted = uncounted
            note = f"BPF maps full: {uncounted} listener events not counted (more than {MAX_LISTENERS} listeners?)"
            self.notes = [n for n in self.notes if not n.startswith("BPF maps full")] + [note]
        return self._user_lost + kernel_lost

    def child_deltas(self) -> dict[tuple[int, int], dict[str, int]]:
        """At the last read(): per (netns, listening port), children that entered minus left each
        state since live and before they were queued on a listener (only children born after
        live are followed). Add to the per-state counts of the last full dump minus this value
        as it was at that dump."""
        return {k: dict(v) for k, v in self._child_deltas.items()}

    def listener_child_deltas(self) -> dict[tuple[int, int], dict[str, int]]:
        """At the last read(): per listener (netns, socket inode), its children's states entered
        minus left since they were queued on it (the link taken in the kernel at enqueue)."""
        return {k: dict(v) for k, v in self._listener_child_deltas.items()}

    def child_links(self) -> tuple[dict[decode.Tuple6, tuple[int, int]], dict[int, tuple[int, int]]]:
        """Children queued since live -> their listener (netns, socket inode): by tuple (netns,
        family, laddr, lport, raddr, rport) and by socket address. Read from the kernel on call
        (a walk of the whole map: the sampler asks only when several listeners share an address)."""
        if self.state != "live" or TRANSITIONS not in self.hooks:
            return {}, {}
        with self._lock:
            b = self._bpf
            if b is None:
                return {}, {}
            try:
                return decode.child_links(b[b"tq_child"], self._inodes)
            except Exception:
                return {}, {}

    def in_queue(self) -> dict[tuple[int, str, str, int], float]:
        """Children queued since live and not accepted yet, by (netns, family, raddr, rport):
        unix time each entered its listener's accept queue. Read from the kernel on call."""
        if self.state != "live" or "accepted" not in self.hooks:
            return {}
        with self._lock:
            b = self._bpf
            if b is None:
                return {}
            try:
                return decode.in_queue(b[b"tq_link"], time.time() - time.monotonic())
            except Exception:
                return {}

    def accept_diag(self) -> dict[str, int] | None:
        """Counts of accept tracking's rare paths since live (probes/accept.bpf.c, TQ_DIAG_*;
        docs/ACCEPT.md): accept() without a link, raced accepts marked for their enqueue,
        enqueues that fell back to the queue's tail or found no child. None if not live."""
        with self._lock:
            b = self._bpf
            if b is None or self.state != "live" or "accepted" not in self.hooks:
                return None
            try:
                tbl = b[b"tq_acc_diag"]
            except KeyError:
                return None
            names = ("accept_no_link", "accept_marked_early", "accept_no_listener", "enqueue_sampled_early",
                     "enqueue_took_tail", "enqueue_no_child", "enqueue_note_over_10ms")
            out = {}
            for i, name in enumerate(names):
                v = tbl[tbl.Key(i)]
                out[name] = sum(decode.as_int(x) for x in v) if hasattr(v, "__len__") else decode.as_int(v)
            return out

    def prog_ids(self) -> list[int]:
        """Kernel ids of the programs this instance loaded (from /proc/self/fdinfo)."""
        return loader.prog_ids(self._bpf)

    # ---- per-socket history (probes/timelines.py)

    def timeline(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> list[Transition]:
        return self.timelines.by_tuple(netns, family, laddr, lport, raddr, rport)

    def timeline_by_skaddr(self, netns: int, skaddr: int) -> list[Transition]:
        return self.timelines.by_skaddr(netns, skaddr)

    def state_since(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> tuple[str, float] | None:
        return self.timelines.state_since(netns, family, laddr, lport, raddr, rport)

    # ---- --ebpf

    def program_text(self) -> str:
        """The program as it is (or would be) compiled; needs neither root nor loading."""
        plan = self._plan
        if plan is None:
            try:
                plan = build_plan(self.port, self.netns, self.feed_capacity, ringbuf=self.ringbuf,
                              accept_hook=self.accept_hook, tracepoints=self.tracepoints)
            except Exception as exc:  # --ebpf must print something useful, never a traceback
                return f"// tcpq-top: cannot generate the BPF program: {one_line(exc)}\n" + BPF_C.read_text()
            if self._thread is None:  # not started: `hooks` says what would serve each metric
                self.hooks = dict(plan.hooks)
                self.notes = list(plan.notes)
        return plan.text() + "\n\n" + self._synq_text()

    def _synq_text(self) -> str:
        """The tcp iterator's program (probes/synq.bpf.c) with its offsets, and whether it would
        serve (`hooks`) on this kernel; compiled with the probes, run on demand."""
        from .btf import Btf, BtfError

        head = "// ==== tcp iterator (probes/synq.bpf.c): SYN queue of SO_REUSEPORT members\n"
        try:
            defines = synq.offsets(Btf.vmlinux())
        except (synq.SynqError, BtfError, OSError) as exc:
            if self._thread is None:
                self.notes = [*self.notes, f"{synq.BY_ADDRESS_NOTE}: {exc}"]
            return head + f"// ---- not served: {exc}\n" + synq.program_text()
        if self._thread is None:
            self.hooks = {**self.hooks, synq.METRIC: synq.HOOK}
        return head + synq.program_text(defines)
