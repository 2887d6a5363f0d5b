"""Record/replay: exact round trips, the replay source interface, and damaged files."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from tcptop_q.model import (
    CloseWait,
    Connection,
    Listener,
    ListenerKey,
    NetnsCounters,
    Snapshot,
    Sources,
    Transition,
    snapshot_to_json,
)
from tcptop_q.record import (
    SCHEMA,
    Recorder,
    RecordError,
    RecordingSource,
    ReplaySource,
    snapshot_from_json,
    snapshot_record_json,
)
from tests.conftest import ROOT

T0 = 1_700_000_000.0
NS = 4026532001
KEY = ListenerKey(NS, "ipv4", "0.0.0.0", 8080, cookie=77)
KEY6 = ListenerKey(NS, "ipv6", "::", 443, cookie=78)


def snapshot(tick: int, *, children: bool = False, events: int = 2) -> Snapshot:
    """A sampler-shaped snapshot (same container types as Sampler._build) with awkward values."""
    now = T0 + tick
    evs = tuple(
        Transition(now - 0.5 + i / 100, NS, 0xFFFF888000000000 + tick * 10 + i, "ipv4", "127.0.0.1", 8080,
                   "127.0.0.1", 40000 + tick * 10 + i, "LISTEN" if i % 2 == 0 else "SYN_RECV",
                   "SYN_RECV" if i % 2 == 0 else "ESTABLISHED", None if i % 2 == 0 else 0.1 * i, 0, "swapper/1",
                   listener=KEY)
        for i in range(events)
    )
    conns = None
    if children:
        conns = {
            KEY: tuple(Connection(NS, "ipv4", "CLOSE_WAIT", "127.0.0.1", 8080, "127.0.0.1", 41000 + i, 0, 9000 + i,
                                  11, 0, None, None, None if i else 3.25, listener=KEY) for i in range(6)),
            KEY6: (),
        }
    return Snapshot(
        time=now,
        interval=1.0 if tick else 0.0,
        kernel="6.18.0-test",
        hostname="host\x1b[31m",
        sources=Sources(netlink=True, bpf=tick % 2 == 0, bpf_error=None if tick % 2 == 0 else "BPF off: --no-bpf",
                        bpf_state="live" if tick % 2 == 0 else "off",
                        hooks={"queued": "tracepoint:sock:sk_data_ready"}, lost_events=tick,
                        notes=("owners unknown: \u202eevil",)),
        netns=[NetnsCounters(NS, {"ListenOverflows": 10 * tick, "ListenDrops": 10 * tick, "TCPReqQFullDrop": 0,
                                  "TCPReqQFullDoCookies": 0, "SyncookiesSent": 0, "TCPDeferAcceptDrop": 1,
                                  "TCPFastOpenActive": 5},
                             {"ListenOverflows": 10.0} if tick else {}, {"somaxconn": 4096})],
        listeners=[
            Listener(KEY, 90001, 1234, "serv\u00e9r\x07\udcff", 6, 5, 0, 10 * tick, 10.0, {"CLOSE_WAIT": 6},
                     overflows=10 * tick, overflow_rate=10.0, synack_retrans=None, synack_retrans_rate=None,
                     queued=6, queued_rate=0.0, peak_accept_queue=6, resets_sent=0, resets_received=None),
            Listener(KEY6, 90002, None, None, 0, 511, 2, 0, 0.0, {}),
        ],
        close_wait=[CloseWait(NS, "ipv4", "127.0.0.1", 8080, "127.0.0.1", 41000 + i, 0, 9000 + i, 1234, "server",
                              11, None if i else 1.5, listener=KEY) for i in range(6)],
        events=evs,
        connections=conns,
        seq=tick + 1,
    )


SNAPS = [snapshot(i, children=i % 3 == 0) for i in range(12)]


def record(path: Path, snaps=SNAPS, **kw) -> Path:
    with Recorder(path, interval=1.0, **kw) as rec:
        for snap in snaps:
            rec.write(snap)
    return path


def without_truncation_note(snap: Snapshot) -> Snapshot:
    notes = tuple(n for n in snap.sources.notes if "truncated after line" not in n)
    return dataclasses.replace(snap, sources=dataclasses.replace(snap.sources, notes=notes))


def as_json(snap: Snapshot) -> dict:
    return json.loads(json.dumps(snapshot_record_json(snap)))


# ------------------------------------------------------------------ round trips


def test_round_trip_is_exact(tmp_path):
    src = ReplaySource(record(tmp_path / "r.tcpq.gz"))
    out = list(src)
    assert out == SNAPS  # same dataclasses, same container types as the sampler builds
    assert src.at_end and src.count == len(SNAPS) and src.notes == ()
    assert src.ended_cleanly


def test_snapshot_from_json_inverts_the_contract():
    snap = SNAPS[3]
    again = snapshot_from_json(snapshot_to_json(snap))  # the plain --once --json contract
    assert snapshot_to_json(again) == snapshot_to_json(snap)
    assert again.events == () and again.connections is None  # the contract does not carry them


def test_header_and_file_is_gzip_json_lines(tmp_path):
    path = record(tmp_path / "r.gz")
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    head = json.loads(lines[0])
    assert head["schema"] == SCHEMA and head["kernel"] == os.uname().release and head["host"]
    assert isinstance(head["start"], float)
    kinds = [json.loads(line)["kind"] for line in lines[1:]]
    assert kinds == ["snap"] * len(SNAPS) + ["end"]


def test_seek_step_speed_and_end(tmp_path):
    src = ReplaySource(record(tmp_path / "r.gz"))
    assert src.start == T0 and src.end == T0 + 11
    assert src.sample() == SNAPS[0] and src.time == T0
    assert src.interval == pytest.approx(1.0)  # recorded gap at 1x
    src.speed = 2
    assert src.interval == pytest.approx(0.5)
    src.speed = 10
    assert src.interval == pytest.approx(0.1)
    for bad in (0.4, 10.5, 0):
        with pytest.raises(ValueError, match="0.5x"):
            src.speed = bad
    assert src.slower() == 5.0 and src.faster() == 10.0 and src.faster() == 10.0
    src.seek_index(5)
    assert src.sample() == SNAPS[5]
    assert src.step(-3) == SNAPS[2]
    assert src.step(2) == SNAPS[4]
    assert src.step(100) == SNAPS[-1]
    assert src.at_end
    again = src.sample()  # at the end: the last snapshot again, without its feed batch
    assert again.events == () and again.listeners == SNAPS[-1].listeners
    src.seek_index(0)
    assert src.sample() == SNAPS[0]
    src.seek_index(7)
    assert src.sample() == SNAPS[7]
    assert "2/12" not in src.describe() and "8/12" in src.describe()


def test_interval_setter_maps_to_speed(tmp_path):
    src = ReplaySource(record(tmp_path / "r.gz"))
    src.sample()
    src.interval = 0.25  # the app's "-" key: faster sampling -> faster replay
    assert src.speed == 4.0
    src.interval = 10.0
    assert src.speed == 0.5


def test_timeline_process_info_and_sysctls(tmp_path):
    path = tmp_path / "r.gz"
    with Recorder(path, interval=1.0) as rec:
        rec.write_process(1234, {"pid": 1234, "name": "server", "cmdline": "server --port 8080"}, T0)
        for snap in SNAPS:
            rec.write(snap)
    src = ReplaySource(path)
    ev = SNAPS[4].events[1]
    tuple_ = (ev.netns, ev.family, ev.laddr, ev.lport, ev.raddr, ev.rport)
    src.seek_index(3)
    src.sample()
    assert src.timeline(*tuple_) == []  # not recorded yet at this point of the replay
    src.seek_index(4)
    src.sample()
    # A timeline is one socket's history: like the live BPF timeline it carries no listener.
    assert src.timeline(*tuple_) == [dataclasses.replace(ev, listener=None)]
    info = src.process_info(1234)
    assert info["cmdline"] == "server --port 8080" and info["recorded"] is True
    assert src.process_info(999) is None
    assert src.netns_sysctls(NS) == {"somaxconn": 4096}


def test_filters_apply_to_replay(tmp_path):
    from tcptop_q.source import Filters

    src = ReplaySource(record(tmp_path / "r.gz"), filters=Filters(port=443))
    snap = src.sample()
    assert [lst.key for lst in snap.listeners] == [KEY6]
    assert snap.close_wait == []


def test_large_recording_seeks_through_checkpoints(tmp_path, monkeypatch):
    import tcptop_q.record as record_mod

    monkeypatch.setattr(record_mod, "_CHECKPOINT_BYTES", 4096)
    monkeypatch.setattr(record_mod, "_MAX_CHECKPOINTS", 8)
    snaps = [snapshot(i, children=True, events=20) for i in range(200)]
    src = ReplaySource(record(tmp_path / "big.gz", snaps))
    assert 4 <= len(src._idx.checkpoints) <= 8
    for i in (150, 3, 199, 0, 77, 78, 12):
        src.seek_index(i)
        assert src.sample() == snaps[i]


def test_plain_uncompressed_recording_reads_too(tmp_path):
    path = record(tmp_path / "r.gz")
    plain = tmp_path / "r.jsonl"
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    assert list(ReplaySource(plain)) == SNAPS


def test_recording_source_records_what_it_returns(tmp_path):
    class Fake:
        interval = 1.0
        closed = False

        def __init__(self):
            self.it = iter(SNAPS)

        def sample(self):
            return next(self.it)

        def process_info(self, pid):
            return {"pid": pid, "name": "server"}

        def timeline(self, *a):
            return []

        def netns_sysctls(self, netns):
            return {}

        def close(self):
            self.closed = True

        def start_bpf(self):
            return "started"

    inner = Fake()
    path = tmp_path / "rec.gz"
    src = RecordingSource(inner, path)
    assert src.start_bpf() == "started"
    src.interval = 2.0
    assert inner.interval == 2.0
    live = [src.sample() for _ in range(5)]
    src.close()
    assert inner.closed
    replay = ReplaySource(path)
    assert list(replay) == live
    assert replay.process_info(1234)["name"] == "server"
    assert replay.header["interval"] == 1.0


def test_recording_source_survives_a_failing_disk(tmp_path):
    class Fake:
        interval = 1.0

        def __init__(self):
            self.it = iter(SNAPS)

        def sample(self):
            return next(self.it)

        def process_info(self, pid):
            return None

        def close(self):
            pass

    src = RecordingSource(Fake(), tmp_path / "rec.gz")

    def boom(snap):
        raise OSError(28, "No space left on device")

    src.recorder.write = boom  # type: ignore[method-assign]
    snap = src.sample()
    assert snap.listeners == SNAPS[0].listeners
    assert any("recording to" in n and "No space left" in n for n in snap.sources.notes)
    src.close()


def test_unwritable_path_is_one_line(tmp_path):
    with pytest.raises(RecordError) as err:
        Recorder(tmp_path / "no" / "such" / "dir.gz")
    assert "\n" not in str(err.value) and "cannot write recording" in str(err.value)


# ------------------------------------------------------------------ damaged files


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


def test_empty_file(tmp_path):
    path = tmp_path / "e.gz"
    path.write_bytes(b"")
    with pytest.raises(RecordError) as err:
        ReplaySource(path)
    assert one_line(err).startswith("line 1: empty file")
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(RecordError, match="^line 1: empty file"):
        ReplaySource(path)


@pytest.mark.parametrize("content", [
    b"hello world\nthis is text\n",
    bytes((i * 151 + 17) % 256 for i in range(4096)),  # binary noise, the same on every collection
    b"\x89PNG\r\n\x1a\n" + bytes((i * 73 + 5) % 256 for i in range(100)),
    gzip.compress(b'{"some": "json"}\n{"kind": "snap"}\n'),
    gzip.compress(b'[1, 2, 3]\n'),
    gzip.compress(b'{"schema": "other-tool/1"}\n'),
    b"x" * (2 << 20),  # no newline in the first megabytes
])
def test_foreign_file(tmp_path, content):
    path = tmp_path / "f.gz"
    path.write_bytes(content)
    with pytest.raises(RecordError) as err:
        ReplaySource(path)
    assert one_line(err).startswith("line 1: not a tcpq-top recording")


def test_a_snapshot_json_is_not_a_recording(tmp_path):
    path = tmp_path / "snap.json"
    path.write_text(json.dumps(snapshot_to_json(SNAPS[0])) + "\n")
    with pytest.raises(RecordError, match=r"^line 1: this is a `tcpq-top --json` snapshot"):
        ReplaySource(path)


def test_newer_schema(tmp_path):
    path = record(tmp_path / "r.gz")
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    lines[0] = lines[0].replace(b"tcpq-top.record/1", b"tcpq-top.record/2")
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(RecordError) as err:
        ReplaySource(path)
    assert one_line(err) == ("line 1: recording schema tcpq-top.record/2 is newer than this tcpq-top reads "
                             "(tcpq-top.record/1); upgrade tcpq-top")


def test_truncated_tail_replays_whole_lines_with_a_note(tmp_path):
    path = record(tmp_path / "r.gz")
    data = path.read_bytes()
    cut = tmp_path / "cut.gz"
    for size in (len(data) - 9, len(data) * 2 // 3, len(data) // 2):
        cut.write_bytes(data[:size])
        src = ReplaySource(cut)
        got = list(src)
        assert 0 < len(got) <= len(SNAPS)
        assert [without_truncation_note(s) for s in got] == SNAPS[: len(got)]
        assert any("truncated after line" in n for n in src.notes)
        assert all(any("truncated" in n for n in s.sources.notes) for s in got)


def test_truncated_in_the_header_or_first_snapshot(tmp_path):
    path = record(tmp_path / "r.gz")
    data = path.read_bytes()
    raw = gzip.decompress(data)
    header_len = raw.index(b"\n") + 1
    cut = tmp_path / "cut.gz"
    # Compress the header plus part of the first snapshot line with a sync flush: a killed writer.
    for upto, where in ((header_len // 2, "line 1: the file ends inside the header"),
                        (header_len + 100, "line 2: the file ends inside the first snapshot")):
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        cut.write_bytes(comp.compress(raw[:upto]) + comp.flush(zlib.Z_SYNC_FLUSH))
        with pytest.raises(RecordError) as err:
            ReplaySource(cut)
        assert one_line(err).startswith(where)
    cut.write_bytes(data[:5])  # inside the gzip header itself
    with pytest.raises(RecordError, match="^line 1: the file ends inside the header"):
        ReplaySource(cut)


def test_header_only_recording(tmp_path):
    path = record(tmp_path / "r.gz", snaps=[])
    with pytest.raises(RecordError, match=r"^line 2: the recording holds no snapshots"):
        ReplaySource(path)


def test_corrupted_line_names_its_line(tmp_path):
    path = record(tmp_path / "r.gz")
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    # Line 6 (the 5th snapshot): damage the middle of its JSON, keep its first fields.
    line = lines[5]
    lines[5] = line[: len(line) // 2] + b"\x00}{garbage" + line[len(line) // 2 + 10:]
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    src = ReplaySource(path)
    got = []
    with pytest.raises(RecordError) as err:
        for snap in src:
            got.append(snap)
    assert one_line(err).startswith("line 6: corrupted snapshot record")
    assert got == SNAPS[:4]


def test_line_that_is_not_a_record_is_caught_on_open(tmp_path):
    path = record(tmp_path / "r.gz")
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    lines[3] = b"rm -rf / # not a record"
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(RecordError, match=r"^line 4: not a tcpq-top record line"):
        ReplaySource(path)
    lines[3] = b'{"kind":"snap","time":"x"}'
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(RecordError, match=r"^line 4: corrupted snapshot record"):
        ReplaySource(path)


def test_corrupted_compressed_bytes(tmp_path):
    path = record(tmp_path / "r.gz", snaps=[snapshot(i, children=True, events=30) for i in range(40)])
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError) as err:
        src = ReplaySource(path)
        list(src)
    text = one_line(err)
    assert text.startswith("line ") and ("corrupted" in text or "damaged" in text), text


def test_crc_mismatch_is_caught(tmp_path):
    path = record(tmp_path / "r.gz")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the gzip trailer's CRC32
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError, match=r"^line \d+: corrupted compressed data .*incorrect data check"):
        ReplaySource(path)


def test_killed_writer_leaves_a_readable_file(tmp_path):
    """SIGKILL a process in the middle of recording: every whole line it wrote replays."""
    path = tmp_path / "killed.gz"
    code = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from tests.record.test_record_replay import snapshot\n"
        "from tcptop_q.record import Recorder\n"
        "rec = Recorder(sys.argv[1], interval=0.01)\n"
        "i = 0\n"
        "while True:\n"
        "    rec.write(snapshot(i, children=i % 5 == 0, events=50))\n"
        "    i += 1\n"
        "    if i == 20: print('written', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(ROOT)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    src = ReplaySource(path)
    got = list(src)
    assert len(got) >= 20
    assert [without_truncation_note(s) for s in got] == [
        snapshot(i, children=i % 5 == 0, events=50) for i in range(len(got))]
    assert not src.ended_cleanly
    assert any("truncated after line" in n for n in src.notes)
