"""The exporter's threads: one samples the kernel every --interval, HTTP threads serve the
latest snapshot. A scrape never touches the kernel; a slow or huge request holds only its
own thread, never the sampler.

    main thread     signals -> stop; joins the others; closes the source (detaches BPF)
    tcpq-sample     LiveSource.sample() every interval -> Exporter.publish()
    tcpq-http       accept loop (ThreadingHTTPServer); one short-lived thread per connection
"""

from __future__ import annotations

import base64
import gzip
import os
import signal
import socket
import ssl
import sys
import threading
import time
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
    """The per-listener part of one exposition format, kept per listener between scrapes.

    prometheus_client renders every sample line (about 10 per listener); at 10k listeners that
    is seconds of Python per scrape. Most listeners are the same from one sample to the next
    (the sampler even hands over the same Listener object), so each listener's lines are
    rendered by prometheus_client's encoder once, cut out of its output by family, and kept
    until the listener (or its netns name) changes. The exposition is then the families'
    headers with the kept lines in listener order: byte for byte what the encoder prints
    for the whole set (tests/unit/test_exporter_metrics.py checks it).
    """

    BATCH = 250  # listeners rendered per encoder call

    def __init__(self, encoder: Callable[[CollectorRegistry], bytes]) -> None:
        self.encoder = encoder
        # key -> (listener, its netns name, one text chunk per listener family)
        self.kept: dict[Any, tuple[Listener, str | None, list[str]]] = {}
        self.headers, _ = self._blocks([], {})

    def _blocks(self, listeners: list[Listener], names: dict[int, str | None]) -> tuple[list[str], list[list[str]]]:
        fams, counts = metrics.listener_families(listeners, names)
        text = self.encoder(_registry(fams)).decode()
        headers: list[str] = []
        lines: list[list[str]] = []
        for line in text.splitlines(keepends=True):
            if line.startswith("# HELP "):
                headers.append(line)
                lines.append([])
            elif line.startswith("# EOF"):
                continue
            elif line.startswith("#"):
                headers[-1] += line
            else:
                lines[-1].append(line)
        if len(headers) != len(fams) or any(len(b) != sum(c) for b, c in zip(lines, counts, strict=True)):
            raise RuntimeError("exposition does not split by family and sample")  # a prometheus_client change
        # regroup: chunks[i][f] = the lines of listener i in family f
        chunks: list[list[str]] = [[] for _ in listeners]
        for f, block in enumerate(lines):
            pos = 0
            for i, n in enumerate(counts[f]):
                chunks[i].append("".join(block[pos:pos + n]))
                pos += n
        return headers, chunks

    def render(self, listeners: list[Listener], names: dict[int, str | None]) -> str:
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
        out = []
        for f, header in enumerate(self.headers):
            out.append(header)
            out.extend(chunk[f] for chunk in per)
        return "".join(out)


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


class Exporter:
    """Holds the latest snapshot and renders it once per snapshot and format."""

    def __init__(self, max_listeners: int) -> None:
        self.max_listeners = max_listeners
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._pub = Published(None, metrics.ExporterState(), [], 0)
        self._cache: dict[tuple[int, str, bool], bytes] = {}
        self._listener_caches: dict[str, ListenerCache] = {}
        self._wanted: dict[tuple[str, bool], float] = {}  # (content type, gzip) -> last asked
        # process_resident_memory_bytes & co: the exporter's own cost, as every exporter has.
        self._process = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="", registry=self._process)

    def publish(self, snap: Snapshot | None, duration_s: float | None, error: bool = False) -> None:
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
            self._pub = Published(snap, state, listeners, old.seq + 1)

    @property
    def published(self) -> Published:
        with self._lock:
            return self._pub

    PRERENDER_S = 120.0  # a format scraped this recently is rendered right after each sample

    def prerender(self) -> None:
        """On the sampling thread, after publish(): render the new snapshot in every format a
        client asked for in the last PRERENDER_S, so that a scrape finds the bytes ready and
        never waits for a render. A format nobody scrapes costs nothing."""
        now = time.monotonic()
        for (accept, gz), when in list(self._wanted.items()):
            if now - when < self.PRERENDER_S:
                self._render_cached(accept, gz)
            else:
                self._wanted.pop((accept, gz), None)

    def render(self, accept: str, gzip_ok: bool) -> tuple[bytes, str]:
        _, content_type = exposition.choose_encoder(accept)
        self._wanted[(content_type, gzip_ok)] = time.monotonic()
        return self._render_cached(content_type, gzip_ok)

    def _render_cached(self, accept: str, gzip_ok: bool) -> tuple[bytes, str]:
        encoder, content_type = exposition.choose_encoder(accept)
        pub = self.published
        key = (pub.seq, content_type, gzip_ok)
        body = self._cache.get(key)
        if body is not None:
            return body, content_type
        with self._render_lock:  # concurrent scrapes of one new snapshot render it once
            body = self._cache.get(key)
            if body is None:
                body = self._render(pub, encoder, content_type).encode()
                if gzip_ok:
                    body = gzip.compress(body, compresslevel=1)
                # Only the newest snapshot's renderings are kept.
                self._cache = {k: v for k, v in self._cache.items() if k[0] == pub.seq}
                self._cache[key] = body
        return body, content_type

    def _render(self, pub: Published, encoder: Callable[[CollectorRegistry], bytes], content_type: str) -> str:
        """head (the exporter) + listeners (spliced) + netns + process: metrics.families()'
        order, then the process collector."""
        eof = "# EOF\n"
        head = encoder(_registry(list(metrics.head_families(pub.snap, pub.state)))).decode()
        parts = [head.removesuffix(eof)]
        if pub.snap is not None:
            cache = self._listener_caches.get(content_type)
            if cache is None:
                cache = self._listener_caches[content_type] = ListenerCache(encoder)
            parts.append(cache.render(pub.listeners, metrics.netns_names(pub.snap)))
            parts.append(encoder(_registry(list(metrics.netns_families(pub.snap)))).decode().removesuffix(eof))
        parts.append(encoder(self._process).decode())
        return "".join(parts)


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

    def run(self) -> None:
        next_at = time.monotonic()
        first = True
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                snap = self.source.sample(children=True if first else None)
            except Exception as exc:
                if self.stop.is_set():
                    return
                self.exporter.publish(None, None, error=True)
                text = f"{PROG}: sample failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if text != self._last_error:  # once per distinct error, not once per tick
                    self.log(text)
                    self._last_error = text
            else:
                first = False
                self.exporter.publish(snap, time.perf_counter() - t0)
                self._quiet_feed()
                self._say_dropped()
                try:
                    self.exporter.prerender()
                except Exception as exc:  # a scrape renders again; never stop sampling for it
                    self.log(f"{PROG}: render failed: {type(exc).__name__}: {exc}")
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # a sample longer than the interval: start again from now
                next_at = now
            self.stop.wait(next_at - now)

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
