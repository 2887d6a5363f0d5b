"""Record snapshots to a file and replay them through the same source interface as LiveSource.

A recording is data only: gzip-compressed JSON lines (plain, uncompressed lines are read
too). Line 1 is a header; then one line per snapshot, in the order they were sampled:

    {"schema": "tcpq-top.record/1", "host": ..., "kernel": ..., "start": <unix s>, ...}
    {"kind": "snap", "time": T, "seq": N, "events": [...], "snapshot": {<snapshot JSON>}}
    {"kind": "proc", "time": T, "pid": P, "info": {...}}      # owner process facts, once per pid
    {"kind": "end", "time": T, "snapshots": N}                # written by close()

"snapshot" is `model.snapshot_to_json` (the `--once --json` contract) plus what the contract
leaves out (full TcpExt counters, bpf_state, seq, connections); "events" (the feed batch) comes
first so a reader can index timelines without decoding the rest of the line.

The writer sync-flushes the gzip stream after every line: a killed writer leaves a file whose
whole lines all replay. The reader scans the file once on open, keeping only times, a few
decompressor checkpoints and the feed events (bounded), so an hour at 10k listeners never has
to sit in memory.
"""

from __future__ import annotations

import bisect
import dataclasses
import gzip
import json
import os
import re
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from . import attribution, codec, model
from .model import (
    CloseWait,
    Connection,
    Listener,
    ListenerKey,
    NetnsCounters,
    Snapshot,
    Sources,
    Transition,
    safe_text,
)
from .timeline import socket_timeline

SCHEMA = "tcpq-top.record/1"
SCHEMA_PREFIX = "tcpq-top.record/"
VERSION = 1
SPEEDS = (0.5, 1.0, 2.0, 5.0, 10.0)
MIN_SPEED, MAX_SPEED = 0.5, 10.0
TIMELINE_EVENTS = 200_000  # feed events kept for timelines in replay (~40 MB at most)
PROCESS_PIDS = 256  # owner processes described per recording


class RecordError(Exception):
    """A recording that cannot be written or read; the message is one line and names the line."""


# ---------------------------------------------------------------- encoding


def _key_to_json(key: ListenerKey) -> dict:
    return codec.to_json(key)


_key_from_json = codec.decoder(ListenerKey)
transition_from_json = codec.decoder(Transition)
_listener_from_json = codec.decoder(Listener)  # reads the old `accepts`/`accept_rate` names too
_close_wait_from_json = codec.decoder(CloseWait)
_connection_from_json = codec.decoder(Connection)
_decode_netns = codec.decoder(NetnsCounters)
_decode_sources = codec.decoder(Sources)


def snapshot_record_json(snap: Snapshot) -> dict:
    """`model.snapshot_to_json` plus what the contract does not carry, so replay loses nothing."""
    out = model.snapshot_to_json(snap, record=True)
    out["seq"] = snap.seq
    out["connections"] = (
        None
        if snap.connections is None
        else [
            {"key": _key_to_json(key), "children": [model.socket_to_json(c) for c in conns]}
            for key, conns in snap.connections.items()
        ]
    )
    return out


def _netns_from_json(d: Mapping) -> NetnsCounters:
    if "counters" not in d:  # plain contract JSON: only the named counters, as top-level fields
        names = model.NETNS_COUNTERS + model.NETNS_EXTRA_COUNTERS
        d = {**d, "counters": {name: d[name] for name in names if name in d}}
    ns: NetnsCounters = _decode_netns(d)
    if ns.name is None and ns.name_source is None:
        return ns
    # Recorded names replay as recorded (recordings older than names have none). They were
    # made inert when recorded; a hand-edited file is made inert again here.
    return dataclasses.replace(
        ns,
        name=None if ns.name is None else safe_text(ns.name, 128),
        name_source=None if ns.name_source is None else safe_text(ns.name_source, 32),
    )


def _sources_from_json(d: Mapping) -> Sources:
    if "bpf_state" not in d:  # plain contract JSON
        d = {**d, "bpf_state": "live" if d["bpf"] else "off"}
    hooks = {str(k): str(v) for k, v in d.get("hooks", {}).items()}
    alias = hooks.pop("accepts", None)  # the deprecated JSON alias of `queued` (older recordings: only it)
    if alias is not None:
        hooks.setdefault("queued", alias)
    d = {**d, "hooks": hooks}
    return _decode_sources(d)  # type: ignore[no-any-return]


def snapshot_from_json(d: Mapping, events: Sequence[Mapping] = ()) -> Snapshot:
    """Inverse of `snapshot_record_json` (and of `model.snapshot_to_json`, for what it carries).

    Raises KeyError/TypeError/ValueError on malformed input; callers add the line number.
    """
    if d.get("schema") != model.SCHEMA:
        raise ValueError(f"snapshot schema {d.get('schema')!r}, expected {model.SCHEMA!r}")
    conns_json = d.get("connections")
    # The JSON does not carry which listener a socket belongs to: decided again, as the sampler does.
    return attribution.attribute_snapshot(Snapshot(
        time=float(d["time"]),
        interval=float(d["interval"]),
        kernel=str(d["kernel"]),
        hostname=str(d.get("hostname", "")),
        sources=_sources_from_json(d["sources"]),
        netns=[_netns_from_json(ns) for ns in d["netns"]],
        listeners=[_listener_from_json(lst) for lst in d["listeners"]],
        close_wait=[_close_wait_from_json(cw) for cw in d["close_wait"]],
        events=tuple(transition_from_json(ev) for ev in events),
        connections=(
            None
            if conns_json is None
            else {_key_from_json(c["key"]): tuple(_connection_from_json(x) for x in c["children"]) for c in conns_json}
        ),
        seq=int(d.get("seq", 0)),
    ))


def _dumps(obj: Any) -> bytes:
    # ASCII only: twice as fast to encode, and lone surrogates (undecodable names) survive as \udcXX escapes.
    return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"


# ---------------------------------------------------------------- writing


class Recorder:
    """Writes snapshots as gzip JSON lines; every line is flushed whole (Z_SYNC_FLUSH)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        interval: float | None = None,
        argv: Sequence[str] | None = None,
        host: str | None = None,
        kernel: str | None = None,
        start: float | None = None,
        compresslevel: int = 6,  # level 1: ~25% larger files at 10k listeners, no clear win per tick (docs/RECORD.md)
    ) -> None:
        self.path = os.fspath(path)
        self.count = 0
        self.bytes_in = 0
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        try:
            self._raw: IO[bytes] = open(self.path, "wb")  # noqa: SIM115
        except OSError as exc:
            raise RecordError(f"cannot write recording {self.path}: {exc.strerror or exc}") from None
        self._gz: gzip.GzipFile | None = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._raw, compresslevel=compresslevel, mtime=0
        )
        header = {
            "schema": SCHEMA,
            "snapshot_schema": model.SCHEMA,
            "tool": "tcpq-top",
            "host": host if host is not None else socket.gethostname(),
            "kernel": kernel if kernel is not None else os.uname().release,
            "start": start if start is not None else time.time(),
            "interval": interval,
            "argv": list(argv) if argv is not None else None,
        }
        self._line(header)

    def _line(self, obj: Any) -> None:
        with self._lock:
            if self._gz is None:
                raise RecordError(f"recording {self.path} is closed")
            data = _dumps(obj)
            self._gz.write(data)
            self._gz.flush(zlib.Z_SYNC_FLUSH)  # a killed writer leaves every whole line readable
            self.bytes_in += len(data)

    def write(self, snap: Snapshot) -> None:
        body = snapshot_record_json(snap)
        # "kind", "time", "seq", "events" first and in this order: the reader indexes them cheaply.
        self._line({
            "kind": "snap", "time": snap.time, "seq": snap.seq,
            "events": [model.socket_to_json(ev) for ev in snap.events],
            "snapshot": body,
        })
        self.count += 1

    def wants_process(self, pid: int) -> bool:
        return pid not in self._pids and len(self._pids) < PROCESS_PIDS

    def write_process(self, pid: int, info: Mapping[str, Any] | None, when: float | None = None) -> None:
        self._pids.add(pid)
        self._line({"kind": "proc", "time": when if when is not None else time.time(), "pid": pid,
                    "info": None if info is None else dict(info)})

    def close(self) -> None:
        if self._gz is None:
            return
        try:
            self._line({"kind": "end", "time": time.time(), "snapshots": self.count})
        except (OSError, RecordError):
            pass
        with self._lock:
            gz, self._gz = self._gz, None
            try:
                gz.close()
            finally:
                self._raw.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordingSource:
    """Wraps a live source: every sampled snapshot also goes to a Recorder.

    A failing disk never takes the view down: recording stops and the snapshots say why.
    """

    def __init__(self, inner: Any, recorder: Recorder | str | os.PathLike, **header: Any) -> None:
        self.inner = inner
        if not isinstance(recorder, Recorder):
            header.setdefault("interval", getattr(inner, "interval", None))
            recorder = Recorder(recorder, **header)
        self.recorder = recorder
        self.error: str | None = None

    @property
    def interval(self) -> float:
        return self.inner.interval

    @interval.setter
    def interval(self, value: float) -> None:
        self.inner.interval = value

    def sample(self, *args: Any, **kw: Any) -> Snapshot:
        snap = self.inner.sample(*args, **kw)
        if self.error is None:
            try:
                for lst in snap.listeners:
                    if lst.pid is not None and self.recorder.wants_process(lst.pid):
                        self.recorder.write_process(lst.pid, self.inner.process_info(lst.pid), snap.time)
                self.recorder.write(snap)
            except (OSError, RecordError, ValueError) as exc:
                self.error = f"recording to {self.recorder.path} stopped: {exc}".splitlines()[0]
        if self.error is not None:
            snap = dataclasses.replace(snap, sources=dataclasses.replace(
                snap.sources, notes=(*snap.sources.notes, self.error)))
        return snap

    def timeline(self, *args: Any) -> list[Transition]:
        return self.inner.timeline(*args)

    def process_info(self, pid: int) -> dict | None:
        return self.inner.process_info(pid)

    def netns_sysctls(self, netns: int) -> dict[str, int]:
        return self.inner.netns_sysctls(netns)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.recorder.close()

    def __getattr__(self, name: str) -> Any:  # start_bpf, wait_bpf, ...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


# ---------------------------------------------------------------- reading

_SNAP_PREFIX = re.compile(rb'\{"kind":"snap","time":(-?[0-9][0-9.eE+-]*),"seq":(-?[0-9]+),"events":')
_KIND = re.compile(rb'\{"kind":"(\w+)"')
_CHUNK = 1 << 16
_CHECKPOINT_BYTES = 32 << 20  # decompressed bytes between checkpoints (at least)
_MAX_CHECKPOINTS = 256


@dataclasses.dataclass
class _Checkpoint:
    line: int  # number (1-based) of the next line to complete
    offset: int  # compressed bytes consumed
    decomp: Any  # zlib.Decompress copy, None for plain files
    pending: bytes  # decompressed bytes of the next line already produced


class _LineReader:
    """Lines of a gzip or plain file, from the start or from a checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.f: IO[bytes] = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise RecordError(f"cannot read recording {path}: {exc.strerror or exc}") from None
        self.gz = self.f.read(2) == b"\x1f\x8b"
        self.f.seek(0)
        self.d: Any = zlib.decompressobj(31) if self.gz else None
        self.tail = b""  # compressed input not consumed yet (max_length)
        self.buf = bytearray()
        self.line = 1  # number of the next line to return
        self.complete = False  # stream ended cleanly (gzip trailer seen)
        self.eof = False

    def offset(self) -> int:
        return self.f.tell() - len(self.tail)

    def checkpoint(self) -> _Checkpoint:
        return _Checkpoint(self.line, self.offset(), self.d.copy() if self.d is not None else None, bytes(self.buf))

    def restore(self, cp: _Checkpoint) -> None:
        self.f.seek(cp.offset)
        self.d = cp.decomp.copy() if cp.decomp is not None else None
        self.tail = b""
        self.buf = bytearray(cp.pending)
        self.line = cp.line
        self.complete = self.eof = False

    def _fill(self) -> bool:
        """Decompress more into buf; False at the end of the file."""
        if not self.gz:
            data = self.f.read(_CHUNK)
            if not data:
                self.eof = self.complete = True
                return False
            self.buf += data
            return True
        while True:
            if self.d.eof:  # end of a gzip member: the file ends, or another member follows
                rest = self.d.unused_data + self.tail
                self.tail = b""
                if not rest:
                    rest = self.f.read(_CHUNK)
                if not rest.strip(b"\x00"):
                    self.complete = self.eof = True
                    return False
                if rest[:2] != b"\x1f\x8b":
                    raise RecordError(f"line {self.line}: data after the end of the gzip stream: the file is damaged")
                self.d = zlib.decompressobj(31)
                self.tail = rest
            data = self.tail or self.f.read(_CHUNK)
            if not data:
                self.eof = True  # no gzip trailer: the writer never closed the file
                return False
            try:
                out = self.d.decompress(data, _CHUNK * 4)
            except zlib.error as exc:
                raise RecordError(f"line {self.line}: corrupted compressed data ({exc}): the file is damaged") from None
            self.tail = self.d.unconsumed_tail
            if out:
                self.buf += out
                return True

    def next_line(self, limit: int | None = None) -> bytes | None:
        """The next whole line (without newline), or None at the end (a partial tail stays in buf).

        With `limit`, give up (None) once that many bytes came without a newline."""
        start = 0
        while True:
            nl = self.buf.find(b"\n", start)
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                self.line += 1
                return line
            start = len(self.buf)
            if limit is not None and start > limit:
                return None
            if self.eof or not self._fill():
                return None

    def close(self) -> None:
        self.f.close()


class _Index:
    """What one scan of the file learns: snapshot lines and times, processes, events, checkpoints."""

    def __init__(self) -> None:
        self.header: dict = {}
        self.snap_lines: list[int] = []
        self.times: list[float] = []
        self.processes: dict[int, list[tuple[float, dict | None]]] = {}
        self.events: deque[tuple[int, Transition]] = deque(maxlen=TIMELINE_EVENTS)
        self.events_dropped = 0
        self.checkpoints: list[_Checkpoint] = []
        self.notes: list[str] = []
        self.lines = 0
        self.ended_cleanly = False


def _header(line: bytes | None, path: str) -> dict:
    if line is None:
        raise RecordError("line 1: empty file, no header: not a tcpq-top recording")
    try:
        head = json.loads(line)
    except ValueError:
        raise RecordError(f"line 1: not a tcpq-top recording ({os.path.basename(path)} does not start with a JSON header)") from None
    schema = head.get("schema") if isinstance(head, dict) else None
    if not isinstance(schema, str):
        raise RecordError("line 1: not a tcpq-top recording (the first line has no \"schema\")")
    if schema == model.SCHEMA:
        raise RecordError(f"line 1: this is a `tcpq-top --json` snapshot ({schema}), not a recording; record one with --record FILE")
    if not schema.startswith(SCHEMA_PREFIX):
        raise RecordError(f"line 1: not a tcpq-top recording (schema {schema[:60]!r})")
    try:
        version = int(schema[len(SCHEMA_PREFIX):])
    except ValueError:
        raise RecordError(f"line 1: unknown recording schema {schema[:60]!r}") from None
    if version > VERSION:
        raise RecordError(f"line 1: recording schema {schema} is newer than this tcpq-top reads ({SCHEMA}); upgrade tcpq-top")
    return head


def _scan(path: str) -> _Index:
    idx = _Index()
    reader = _LineReader(path)
    try:
        first = reader.next_line(limit=1 << 20)
        if first is None:
            if len(reader.buf) > 1 << 20:
                raise RecordError("line 1: not a tcpq-top recording (no header line in the first megabyte)")
            if reader.buf or (not reader.complete and os.path.getsize(path) > 0):
                if not reader.complete:
                    raise RecordError("line 1: the file ends inside the header line (truncated): not a readable recording")
                first = bytes(reader.buf)  # a header without its newline, in a complete stream
                reader.buf.clear()
        idx.header = _header(first, path)
        decoder = json.JSONDecoder()
        since_cp = 0
        spacing = _CHECKPOINT_BYTES
        idx.checkpoints.append(reader.checkpoint())
        while True:
            line_no = reader.line
            line = reader.next_line()
            if line is None:
                break
            since_cp += len(line) + 1
            m = _SNAP_PREFIX.match(line)
            if m:
                try:
                    t = float(m.group(1))
                except ValueError:
                    raise RecordError(f"line {line_no}: bad time in a snapshot record") from None
                idx.snap_lines.append(line_no)
                idx.times.append(t)
                if line[m.end(): m.end() + 2] != b"[]":
                    try:
                        events, _end = decoder.raw_decode(line.decode("utf-8", "surrogateescape"), m.end())
                        for ev in events:
                            if len(idx.events) == idx.events.maxlen:
                                idx.events_dropped += 1
                            idx.events.append((line_no, transition_from_json(ev)))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise RecordError(f"line {line_no}: corrupted feed events ({_short(exc)})") from None
            else:
                km = _KIND.match(line)
                if km is None:
                    if not line.strip():
                        raise RecordError(f"line {line_no}: empty line where a record was expected: the file is damaged")
                    raise RecordError(f"line {line_no}: not a tcpq-top record line: the file is damaged")
                kind = km.group(1)
                if kind in (b"proc", b"end"):
                    try:
                        rec = json.loads(line)
                        if kind == b"proc":
                            info = rec["info"]
                            idx.processes.setdefault(int(rec["pid"]), []).append((float(rec["time"]), info))
                        else:
                            idx.ended_cleanly = True
                    except (ValueError, KeyError, TypeError) as exc:
                        raise RecordError(f"line {line_no}: corrupted {kind.decode()} record ({_short(exc)})") from None
                elif kind == b"snap":
                    raise RecordError(f"line {line_no}: corrupted snapshot record (its first fields are damaged)")
                # other kinds: written by a newer tcpq-top of the same schema; skipped
            if since_cp >= spacing:
                idx.checkpoints.append(reader.checkpoint())
                since_cp = 0
                if len(idx.checkpoints) > _MAX_CHECKPOINTS:
                    idx.checkpoints = idx.checkpoints[::2]
                    spacing *= 2
        idx.lines = reader.line - 1
        if reader.buf or not reader.complete:
            idx.notes.append(
                f"recording {os.path.basename(path)} is truncated after line {idx.lines} "
                "(the writer stopped without closing it): replaying the whole lines before that"
            )
    finally:
        reader.close()
    if idx.events_dropped:
        idx.notes.append(f"replay timelines hold the last {TIMELINE_EVENTS} feed events only")
    if not idx.snap_lines:
        if reader.buf or not reader.complete:
            where = idx.lines + 1
            raise RecordError(f"line {where}: the file ends inside the first snapshot (truncated): nothing to replay")
        raise RecordError("line 2: the recording holds no snapshots")
    return idx


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


class ReplaySource:
    """Plays a recording back through the LiveSource interface (sample, interval, timeline, ...).

    sample() returns the next recorded snapshot; at the end it keeps returning the last one
    (without its feed events) and `at_end` is True. `interval` is the wall time until the next
    recorded snapshot at the current speed (0.5x-10x); setting it changes the speed.
    """

    replay = True

    def __init__(self, path: str | os.PathLike, *, speed: float = 1.0, filters: Any = None) -> None:
        self.path = os.fspath(path)
        self._idx = _scan(self.path)
        self.header = self._idx.header
        self.notes: tuple[str, ...] = tuple(self._idx.notes)
        self.filters = filters
        self._lock = threading.RLock()
        self._reader = _LineReader(self.path)
        self._pos = 0  # index of the snapshot the next sample() returns
        self._current: Snapshot | None = None
        self._current_pos = -1
        self._speed = 1.0
        self.speed = speed
        self._closed = False

    # -- recorded time and position
    @property
    def count(self) -> int:
        return len(self._idx.times)

    @property
    def start(self) -> float:
        return self._idx.times[0]

    @property
    def end(self) -> float:
        return self._idx.times[-1]

    @property
    def position(self) -> int:
        """Index of the snapshot the next sample() returns (== count at the end)."""
        return self._pos

    @property
    def at_end(self) -> bool:
        return self._pos >= self.count

    @property
    def time(self) -> float:
        """Recorded time of the snapshot last returned (the replay's clock)."""
        if self._current_pos >= 0:
            return self._idx.times[self._current_pos]
        return self._idx.times[min(self._pos, self.count - 1)]

    def clock(self) -> float:
        return self.time

    @property
    def ended_cleanly(self) -> bool:
        return self._idx.ended_cleanly

    # -- speed
    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        value = float(value)
        if not MIN_SPEED <= value <= MAX_SPEED:
            raise ValueError(f"replay speed must be between {MIN_SPEED:g}x and {MAX_SPEED:g}x, not {value:g}")
        self._speed = value

    def faster(self) -> float:
        self._speed = next((s for s in SPEEDS if s > self._speed), SPEEDS[-1])
        return self._speed

    def slower(self) -> float:
        self._speed = next((s for s in reversed(SPEEDS) if s < self._speed), SPEEDS[0])
        return self._speed

    def _recorded_gap(self) -> float:
        times = self._idx.times
        i = self._pos
        if 0 < i < len(times):
            return max(0.0, times[i] - times[i - 1])
        return float(self.header.get("interval") or 1.0)

    @property
    def interval(self) -> float:
        if self._pos == 0:
            return 0.05
        return min(60.0, max(0.02, self._recorded_gap() / self._speed))

    @interval.setter
    def interval(self, value: float) -> None:
        base = float(self.header.get("interval") or self._recorded_gap() or 1.0)
        self._speed = min(MAX_SPEED, max(MIN_SPEED, base / max(float(value), 1e-3)))

    # -- moving
    def seek_index(self, index: int) -> int:
        with self._lock:
            self._pos = max(0, min(self.count - 1, index))
            return self._pos

    def step(self, n: int = 1) -> Snapshot:
        """Move n snapshots from the one last shown (n < 0: back) and return that one."""
        with self._lock:
            base = self._current_pos if self._current_pos >= 0 else self._pos - 1
            self._pos = max(0, min(self.count - 1, base + n))
            return self.sample()

    def sample(self, children: bool | None = None) -> Snapshot:
        with self._lock:
            if self._closed:
                raise RecordError(f"recording {self.path} is closed")
            if self._pos >= self.count:
                last = self._load(self.count - 1)
                self._current_pos = self.count - 1
                return dataclasses.replace(last, events=())
            snap = self._load(self._pos)
            self._current_pos = self._pos
            self._pos += 1
            return snap

    def __iter__(self) -> Iterator[Snapshot]:
        """The remaining snapshots, as fast as they decode (for --batch)."""
        while not self.at_end:
            yield self.sample()

    def _line(self, line_no: int) -> bytes:
        r = self._reader
        if line_no < r.line:
            cps = self._idx.checkpoints
            cp = cps[bisect.bisect_right([c.line for c in cps], line_no) - 1]
            r.restore(cp)
        elif line_no > r.line:
            cps = self._idx.checkpoints
            cp = cps[bisect.bisect_right([c.line for c in cps], line_no) - 1]
            if cp.line > r.line:
                r.restore(cp)
        while True:
            at = r.line
            line = r.next_line()
            if line is None:
                raise RecordError(f"line {line_no}: the file changed since it was opened")
            if at == line_no:
                return line

    def _load(self, i: int) -> Snapshot:
        if i == self._current_pos and self._current is not None:
            return self._current
        line_no = self._idx.snap_lines[i]
        raw = self._line(line_no)
        try:
            rec = json.loads(raw)
            snap = snapshot_from_json(rec["snapshot"], rec["events"])
        except RecordError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RecordError(f"line {line_no}: corrupted snapshot record ({_short(exc)})") from None
        if self.notes:
            snap = dataclasses.replace(snap, sources=dataclasses.replace(
                snap.sources, notes=(*snap.sources.notes, *self.notes)))
        if self.filters is not None:
            snap = self.filters.apply(snap)
        self._current = snap
        return snap

    # -- the rest of the source interface
    def timeline(self, netns: int, family: str, laddr: str, lport: int, raddr: str, rport: int) -> list[Transition]:
        """Recorded feed transitions of one connection, up to the snapshot shown, matched as the
        live probes match them (tcptop_q/timeline.py): by socket, so a client's CLOSE -> SYN_SENT,
        recorded before it had a local port, is part of it."""
        upto = self._idx.snap_lines[max(0, self._current_pos)]
        shown = []
        for line_no, ev in self._idx.events:
            if line_no > upto:
                break
            shown.append(ev)
        # One socket's history: no listener attribution, as the live BPF timeline.
        return socket_timeline(shown, netns, family, laddr, lport, raddr, rport)

    def process_info(self, pid: int) -> dict | None:
        """What was recorded about the process (never the live process that has the pid today)."""
        seen = self._idx.processes.get(pid)
        if not seen:
            return None
        now = self.time
        info = None
        for t, rec in seen:
            if t <= now or info is None:
                info = rec
        return None if info is None else {**info, "recorded": True}

    def netns_sysctls(self, netns: int) -> dict[str, int]:
        snap = self._current
        if snap is None:
            return {}
        for ns in snap.netns:
            if ns.inode == netns:
                return dict(ns.sysctls)
        return {}

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._reader.close()

    def describe(self) -> str:
        """One line for a status bar: host, kernel, recorded span, position, speed."""
        h = self.header
        span = self.end - self.start
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return (f"replay {os.path.basename(self.path)}: {h.get('host', '?')} {h.get('kernel', '?')}, "
                f"{when} ({max(0, self._current_pos) + 1}/{self.count}, {span:.0f}s recorded) at {self._speed:g}x")
