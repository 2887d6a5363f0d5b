"""The exporter's threads: one samples the kernel every --interval, HTTP threads serve the
latest snapshot. A scrape never touches the kernel; a slow or huge request holds only its
own thread, never the sampler.

    main thread     signals -> stop; joins the others; closes the source (detaches BPF)
    tcpq-sample     LiveSource.sample() every interval -> Exporter.publish()
    tcpq-http       accept loop (ThreadingHTTPServer); one short-lived thread per connection
"""

from __future__ import annotations

import base64
import gc
import math
import os
import signal
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import exposition
from prometheus_client.core import CollectorRegistry, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .. import lifecycle
from ..model import Listener, Snapshot
from . import metrics
from .webconfig import WebConfig

PROG = "tcpq-top"
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; Prometheus sends < 1 KiB
MAX_CONNECTIONS = 64  # at once; more are closed at accept (a flood cannot use up threads)
CONN_TIMEOUT_S = 5.0  # per socket operation: a client that stops sending is dropped

INDEX = b"""<html><head><title>tcpq-top exporter</title></head><body>
<h1>tcpq-top exporter</h1><p><a href="/metrics">/metrics</a>: per-listener accept queues, overflows, drops.</p>
</body></html>
"""


@dataclass(frozen=True)
class Published:
    snap: Snapshot | None
    state: metrics.ExporterState
    listeners: list[Listener]
    seq: int


class ListenerCache:
    """The per-listener part of one exposition format, kept per listener between samples.

    prometheus_client renders every sample line (about 10 per listener); at 10k listeners that
    is seconds of Python per render. Most listeners are the same from one sample to the next
    (the sampler even hands over the same Listener object), so each listener's lines are
    rendered by prometheus_client's encoder once, cut out of its output by family, and kept
    until the listener (or its netns name) changes. The exposition is then the families'
    headers with the kept lines in listener order: byte for byte what the encoder prints
    for the whole set (tests/unit/test_exporter_metrics.py checks it).
    """

    BATCH = 250  # listeners rendered per encoder call

    def __init__(self, encoder: Callable[[CollectorRegistry], bytes]) -> None:
        self.encoder = encoder
        # key -> (listener, its netns name, one chunk per listener family; see _keep)
        self.kept: dict[Any, tuple[Listener, str | None, tuple[bytes, ...]]] = {}
        self.headers, _ = self._blocks([], {})

    def _blocks(self, listeners: list[Listener], names: dict[int, str | None]) -> tuple[list[bytes], list[tuple[bytes, ...]]]:
        fams, counts = metrics.listener_families(listeners, names)
        text = self.encoder(_registry(fams))
        headers: list[bytes] = []
        lines: list[list[bytes]] = []
        for line in text.splitlines(keepends=True):
            if line.startswith(b"# HELP "):
                headers.append(line)
                lines.append([])
            elif line.startswith(b"# EOF"):
                continue
            elif line.startswith(b"#"):
                headers[-1] += line
            else:
                lines[-1].append(line)
        if len(headers) != len(fams) or any(len(b) != sum(c) for b, c in zip(lines, counts, strict=True)):
            raise RuntimeError("exposition does not split by family and sample")  # a prometheus_client change
        # regroup: chunks[i][f] = the lines of listener i in family f
        per: list[list[bytes]] = [[] for _ in listeners]
        for f, block in enumerate(lines):
            pos = 0
            for i, n in enumerate(counts[f]):
                per[i].append(_keep(b"".join(block[pos:pos + n])))
                pos += n
        return headers, [tuple(c) for c in per]

    def render(self, listeners: list[Listener], names: dict[int, str | None]) -> list[bytes]:
        """The listener part of the exposition as the kept chunks themselves (no copies; the
        compressed ones still compressed): Body expands them."""
        kept = self.kept
        changed = []
        for lst in listeners:
            have = kept.get(lst.key)
            if have is None or have[1] != names.get(lst.key.netns) or (have[0] is not lst and have[0] != lst):
                changed.append(lst)
        # In batches: the encoder's intermediate objects (a Sample and a label dict per line)
        # stay a few MB at a time, whatever the number of listeners that changed.
        for start in range(0, len(changed), self.BATCH):
            batch = changed[start:start + self.BATCH]
            _, chunks = self._blocks(batch, names)
            for lst, chunk in zip(batch, chunks, strict=True):
                kept[lst.key] = (lst, names.get(lst.key.netns), chunk)
        if len(changed) > 4 * self.BATCH:
            _release_heap()
        if len(kept) > len(listeners):
            live = {lst.key for lst in listeners}
            for key in [k for k in kept if k not in live]:
                del kept[key]
        per = [kept[lst.key][2] for lst in listeners]
        out: list[bytes] = []
        for f, header in enumerate(self.headers):
            out.append(header)
            out.extend(chunk[f] for chunk in per)
        return out


class _Z(bytes):
    """A kept chunk stored zlib-compressed. A listener's histogram is 21 lines that repeat its
    label set (~2.5 KB per family); compressed, 5-10x less. Everything else (a line or two per
    family) is kept as is."""


ZLIB_OVER = 1024  # chunks longer than this are kept compressed


def _keep(chunk: bytes) -> bytes:
    return _Z(zlib.compress(chunk, 1)) if len(chunk) > ZLIB_OVER else chunk


def _expand(parts: list[bytes], block: int = 256 * 1024) -> Iterator[bytes]:
    """The exposition's bytes from the parts, ~`block` bytes at a time (never the whole body
    in memory for gzip)."""
    buf: list[bytes] = []
    size = 0
    decompress = zlib.decompress
    for part in parts:
        if type(part) is _Z:
            part = decompress(part)
        buf.append(part)
        size += len(part)
        if size >= block:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def _release_heap() -> None:
    """After a big render glibc keeps the freed pages; hand them back (RSS is what the SRE
    sees), as the probes do after bcc's compile (tcptop_q/probes/bpf.py)."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _registry(fams: list[Metric]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed(fams))
    return reg


class _Fixed(Collector):
    def __init__(self, fams: list[Metric]) -> None:
        self.fams = fams

    def collect(self) -> Iterator[Metric]:
        return iter(self.fams)


class Body:
    """One snapshot in one format: the exposition as byte strings (`parts`), and its plain
    and gzip encodings, each made once (on the sampling thread for what clients asked for
    recently, else by the first scrape that asks; never again for this snapshot)."""

    def __init__(self, parts: list[bytes], content_type: str) -> None:
        self.parts = parts
        self.content_type = content_type
        self._bytes: dict[bool, bytes] = {}
        self._lock = threading.Lock()

    def get(self, gzip_ok: bool) -> bytes:
        body = self._bytes.get(gzip_ok)
        if body is None:
            with self._lock:  # concurrent scrapes of one snapshot encode it once
                body = self._bytes.get(gzip_ok)
                if body is None:
                    body = self._bytes[gzip_ok] = _gzip(self.parts) if gzip_ok else b"".join(_expand(self.parts))
        return body


def _gzip(parts: list[bytes]) -> bytes:
    """gzip (level 1) of the exposition, fed 256 KiB at a time: never the whole plain body in
    memory (12 MB at 2000 listeners with the probes' histograms), and zlib runs without the GIL
    meanwhile."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    out = [comp.compress(block) for block in _expand(parts)]
    out.append(comp.flush())
    return b"".join(out)


@dataclass(frozen=True)
class Rendered:
    pub: Published
    bodies: dict[str, Body]  # content type -> the snapshot in that format


TEXT = exposition.CONTENT_TYPE_LATEST
OPENMETRICS = exposition.choose_encoder("application/openmetrics-text; version=1.0.0")[1]


class Exporter:
    """Holds the latest snapshot, rendered by the thread that publishes it.

    A scrape (render()) only picks the bytes of the last rendered snapshot: it never waits
    for a sample or a render, and the sampling thread never waits for a scrape. The hand-over
    is one reference (`_rendered`), replaced whole after each render.

    OpenMetrics (what Prometheus asks for) is rendered after every sample. The text format is
    rendered after every sample while someone scraped it in the last TEXT_KEEP_S; the first
    text scrape (or the first after a pause) renders it on its own thread, once."""

    WANTED_S = 120.0  # a (format, gzip) scraped this recently is encoded right after each sample
    TEXT_KEEP_S = 600.0  # the text format's kept lines are dropped after this long unscraped

    def __init__(self, max_listeners: int) -> None:
        self.max_listeners = max_listeners
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()  # the ListenerCaches: one renderer at a time
        self._pub = Published(None, metrics.ExporterState(), [], 0)
        self._listener_caches: dict[str, ListenerCache] = {}
        self._wanted: dict[tuple[str, bool], float] = {}  # (content type, gzip) -> last asked
        self._text_asked = -math.inf
        # process_resident_memory_bytes & co: the exporter's own cost, as every exporter has.
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="", registry=self._process)
        self._rendered = self._render_all(self._pub)

    def publish(self, snap: Snapshot | None, duration_s: float | None, error: bool = False) -> None:
        """Take a new sample (None: the sample failed, keep the last one) and render it, on the
        calling thread. Scrapes meanwhile get the previous rendering."""
        with self._lock:
            old = self._pub
            state = old.state
            if snap is None:
                snap = old.snap
                listeners, dropped = old.listeners, state.listeners_dropped
            else:
                listeners, dropped = metrics.select(snap.listeners, self.max_listeners)
            state = metrics.ExporterState(
                sample_duration_s=duration_s if duration_s is not None else state.sample_duration_s,
                sample_errors=state.sample_errors + (1 if error else 0),
                listeners_dropped=dropped,
                samples=state.samples + (0 if error else 1),
            )
            self._pub = pub = Published(snap, state, listeners, old.seq + 1)
        rendered = self._render_all(pub)
        now = time.monotonic()
        for (ctype, gz), when in list(self._wanted.items()):
            if now - when >= self.WANTED_S:
                self._wanted.pop((ctype, gz), None)
            elif ctype in rendered.bodies:
                rendered.bodies[ctype].get(gz)  # encoded here, not by the next scrape
        self._rendered = rendered  # the hand-over: one reference

    @property
    def published(self) -> Published:
        with self._lock:
            return self._pub

    @property
    def rendered(self) -> Rendered:
        return self._rendered

    def render(self, accept: str, gzip_ok: bool) -> tuple[bytes, str]:
        """For a scrape: the last rendered snapshot's bytes in the negotiated format."""
        _, content_type = exposition.choose_encoder(accept)
        now = time.monotonic()
        self._wanted[(content_type, gzip_ok)] = now
        rendered = self._rendered
        body = rendered.bodies.get(content_type)
        if body is None:  # text, not scraped lately: render the served snapshot in it, once
            self._text_asked = now
            with self._render_lock:
                rendered = self._rendered
                body = rendered.bodies.get(content_type)
                if body is None:
                    body = rendered.bodies[content_type] = self._body(rendered.pub, content_type)
        else:
            if content_type == TEXT:
                self._text_asked = now
        return body.get(gzip_ok), content_type

    def _render_all(self, pub: Published) -> Rendered:
        with self._render_lock:
            bodies = {OPENMETRICS: self._body(pub, OPENMETRICS)}
            if time.monotonic() - self._text_asked < self.TEXT_KEEP_S:
                bodies[TEXT] = self._body(pub, TEXT)
            else:
                self._listener_caches.pop(TEXT, None)
        return Rendered(pub, bodies)

    def _body(self, pub: Published, content_type: str) -> Body:
        """head (the exporter) + listeners (spliced) + netns + process: metrics.families()'
        order, then the process collector."""
        encoder, _ = exposition.choose_encoder(content_type)
        eof = b"# EOF\n"
        parts = [encoder(_registry(list(metrics.head_families(pub.snap, pub.state)))).removesuffix(eof)]
        if pub.snap is not None:
            cache = self._listener_caches.get(content_type)
            if cache is None:
                cache = self._listener_caches[content_type] = ListenerCache(encoder)
            parts.extend(cache.render(pub.listeners, metrics.netns_names(pub.snap)))
            parts.append(encoder(_registry(list(metrics.netns_families(pub.snap)))).removesuffix(eof))
        parts.append(encoder(self._process))
        return Body(parts, content_type)


# ------------------------------------------------------------------------- HTTP


class _CappedReader:
    """The request's head may be at most MAX_HEAD_BYTES: then 431, whatever the line lengths."""

    def __init__(self, raw: Any, cap: int) -> None:
        self.raw = raw
        self.left = cap

    def readline(self, limit: int = -1) -> bytes:
        import http.client

        if self.left <= 0:
            raise http.client.LineTooLong("request head")
        want = self.left + 1 if limit < 0 else min(limit, self.left + 1)
        line = self.raw.readline(want)
        self.left -= len(line)
        if self.left < 0:
            raise http.client.LineTooLong("request head")
        return line

    def read(self, n: int = -1) -> bytes:
        return b""  # a GET has no body we would read

    def close(self) -> None:
        self.raw.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = CONN_TIMEOUT_S
    server_version = "tcpq-top"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.rfile = _CappedReader(self.rfile, MAX_HEAD_BYTES)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        import http.client

        try:
            super().handle_one_request()
        except http.client.LineTooLong:  # the request line alone was over the cap
            self.close_connection = True
            try:
                self.send_error(431, "Request head too large")
            except OSError:
                pass
        # A keep-alive connection gets a fresh head budget for its next request.
        if isinstance(self.rfile, _CappedReader):
            self.rfile.left = MAX_HEAD_BYTES

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no access log
        pass

    def _authorized(self) -> bool:
        cfg = self.server.web
        if not cfg.users:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if user and cfg.check(user, password):
                return True
        self.close_connection = True
        self._reply(401, b"Unauthorized\n", "text/plain; charset=utf-8",
                    {"WWW-Authenticate": 'Basic realm="tcpq-top"'})
        return False

    def end_headers(self) -> None:
        # http_server_config.headers of the web config, on every response (errors too)
        for name, value in self.server.web.headers.items():
            self.send_header(name, value)
        super().end_headers()

    def _reply(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            body, ctype = self.server.exporter.render(self.headers.get("Accept", ""), gz)
            self._reply(200, body, ctype, {"Content-Encoding": "gzip"} if gz else None)
        elif path == "/":
            self._reply(200, INDEX, "text/html; charset=utf-8")
        else:
            self._reply(404, b"Not Found: this exporter serves /metrics\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True  # TIME_WAIT of a previous run only; a live listener still fails

    def __init__(self, addr: tuple[str, int], exporter: Exporter, web: WebConfig) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.exporter = exporter
        self.web = web
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: close, never queue a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        name_thread(b"tcpq-http")
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CONN_TIMEOUT_S)
        if self.web.tls is not None:
            try:  # the handshake runs on this connection's thread, never the accept loop
                request = self.web.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that misbehaves or goes away is not the operator's problem.
        if os.environ.get("TCPQ_DEBUG"):
            super().handle_error(request, client_address)


# ----------------------------------------------------------------------- running


def name_thread(name: bytes) -> None:
    """The kernel's name of the calling thread (top -H, /proc/PID/task/TID/comm; at most 15
    bytes): bench/exporter_scale.py tells the sampling thread's CPU time from the HTTP ones."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def tune_for_serving() -> None:
    """Two process-wide settings for the exporter (docs/EXPORTER.md, "Cost"), before any
    thread starts:
    - one glibc malloc arena: each thread that allocates would otherwise get its own 64 MB
      arena, and the sampling, bcc-load and HTTP threads' arenas kept ~45 MB of freed memory
      resident at 10k listeners (bench/exporter_memory.py); the GIL serializes their
      allocations anyway;
    - a 0.5 ms GIL switch interval (Python's default 5 ms): an HTTP thread that wants the GIL
      while the sampling thread parses 10k listeners gets it within 0.5 ms at each of the ~20
      points where a request handler gives it up (socket calls), instead of 5 ms."""
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc
    sys.setswitchinterval(0.0005)


class Sampling(threading.Thread):
    """Samples on its own tick. The LiveSource's Sampler is made on this thread (setns is
    per thread). The feed (transitions) is turned off in the kernel once the probes are
    live: the exporter serves counters, and every counter stays exact without it."""

    def __init__(self, source: Any, exporter: Exporter, interval: float, log: Callable[[str], None]) -> None:
        super().__init__(name="tcpq-sample", daemon=True)
        self.source = source
        self.exporter = exporter
        self.interval = interval
        self.stop = threading.Event()
        self.log = log
        self._feed_off = False
        self._said_dropped = False
        self._last_error = ""

    GC_EVERY_S = 60.0

    def run(self) -> None:
        name_thread(b"tcpq-sample")
        next_at = time.monotonic()
        first = True
        gc_at = math.inf
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                snap = self.source.sample(children=True if first else None)
            except Exception as exc:
                if self.stop.is_set():
                    return
                self._publish(None, None, error=True)
                text = f"{PROG}: sample failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if text != self._last_error:  # once per distinct error, not once per tick
                    self.log(text)
                    self._last_error = text
            else:
                self._publish(snap, time.perf_counter() - t0)
                del snap
                self._quiet_feed()
                self._say_dropped()
                if first:
                    first = False
                    gc_at = time.monotonic() + self.GC_EVERY_S
                    self._gc_settle()
                elif time.monotonic() >= gc_at:
                    gc_at = time.monotonic() + self.GC_EVERY_S
                    gc.collect()
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # a sample longer than the interval: start again from now
                next_at = now
            self.stop.wait(next_at - now)

    @staticmethod
    def _gc_settle() -> None:
        """A full (generation 2) collection holds the GIL throughout: at 10k listeners they
        took 50-200 ms every few seconds (the snapshot's ~100k objects are promoted every
        tick, which keeps triggering them), and a scrape arriving meanwhile waited. So after
        the first sample what exists now (modules, bcc, the probes' tables) is frozen out of
        collections, and automatic full collections stop: the young generations are still
        collected as usual (short pauses; cycles made by a tick die young), and a full one
        runs every GC_EVERY_S right after a publish, for whatever cycle got old first
        (bench/exporter_scale.py; docs/EXPORTER.md, "Cost")."""
        gc.collect()
        gc.freeze()
        young0, young1, _ = gc.get_threshold()
        gc.set_threshold(young0, young1, 1 << 30)  # generation 2: only by the explicit collect

    def _publish(self, snap: Snapshot | None, duration_s: float | None, error: bool = False) -> None:
        try:
            self.exporter.publish(snap, duration_s, error)
        except Exception as exc:  # scrapes keep the previous rendering; never stop sampling for it
            text = f"{PROG}: render failed: {type(exc).__name__}: {exc}"
            if text != self._last_error:
                self.log(text)
                self._last_error = text

    def _say_dropped(self) -> None:
        dropped = self.exporter.published.state.listeners_dropped
        if dropped and not self._said_dropped:
            self.log(f"{PROG}: {dropped} of the least active listeners left out of the export "
                     f"(--max-listeners {self.exporter.max_listeners}); tcpq_listeners_dropped_from_export has the count")
        self._said_dropped = bool(dropped)

    def _quiet_feed(self) -> None:
        bpf = getattr(self.source, "bpf", None)
        if self._feed_off or bpf is None or getattr(bpf, "state", "off") != "live":
            return
        set_feed = getattr(bpf, "set_feed", None)
        if callable(set_feed):
            set_feed("off")
        self._feed_off = True


def run_serve(args: Any, interval: float) -> int:
    """`tcpq-top --serve [ADDR:]PORT`: returns 0 after SIGTERM/SIGHUP/SIGINT, 2 on bad input."""
    from ..cli import UsageError
    from ..source import Filters, LiveSource
    from . import parse_listen_address, webconfig

    try:
        host, port = parse_listen_address(args.serve)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    web = webconfig.WebConfig()
    if args.web_config:
        try:
            web = webconfig.load(args.web_config)
        except webconfig.WebConfigError as exc:
            raise UsageError(str(exc)) from None
    tune_for_serving()
    exporter = Exporter(args.max_listeners)
    try:
        server = _Server((host, port), exporter, web)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise UsageError(f"--serve {where}: {exc.strerror or exc}") from None

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        lifecycle.arm_force_exit(0, 10.0)  # should an exit not unwind, the watchdog detaches and leaves

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)

    def log(line: str) -> None:
        try:
            print(line, file=sys.stderr, flush=True)
        except OSError:
            pass

    source = LiveSource(
        interval=interval,
        filters=Filters(port=args.port, pid=args.pid, netns=args.netns),
        use_bpf=not args.no_bpf,
        accept_hook=None if getattr(args, "accept_hook", "auto") == "auto" else args.accept_hook,
        blocking_owners=False,
        feed=True,  # turned off in the kernel once live (Sampling._quiet_feed), resets kept
        keep_connections=False,
    )
    lifecycle.on_forced_exit(source.close)
    sampling = Sampling(source, exporter, interval, log)
    http_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                   name="tcpq-http", daemon=True)
    try:
        source.start_bpf()
        sampling.start()
        http_thread.start()
        bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
        scheme = "https" if web.tls is not None else "http"
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        log(f"{PROG}: serving {scheme}://{shown}:{bound_port}/metrics (pid {os.getpid()})")
        while not stop.wait(1.0):
            pass
    finally:
        sampling.stop.set()
        if http_thread.is_alive():
            server.shutdown()
        server.server_close()
        source.close()  # BPF detached first thing inside
        sampling.join(5.0)
    return 0
