"""Bad input: one line on stderr naming the problem, exit 2, never a traceback."""

from __future__ import annotations

import pytest

from tests.conftest import tcpq

CASES = [
    (["--interval", "0"], "--interval"),
    (["--interval", "abc"], "--interval"),
    (["--interval", "nan"], "--interval"),
    (["--interval", "-1"], "--interval"),
    (["--delay", "1e9"], "--delay"),
    (["--port", "0"], "--port"),
    (["--port", "65536"], "--port"),
    (["--port", "http"], "--port"),
    (["--pid", "-5"], "--pid"),
    (["--pid", "1.5"], "--pid"),
    (["--netns", "x"], "--netns"),
    (["--netns", "0"], "--netns"),
    (["--sort", "bogus"], "bogus"),
    (["--sort"], "--sort"),
    (["--once", "--batch"], "not allowed"),
    (["--json"], "--json"),
    (["-n", "3"], "-n"),
    (["--batch", "-n", "0"], "-n"),
    (["--batch", "-n", "many"], "-n"),
    (["--frobnicate"], "--frobnicate"),
    (["extra-positional"], "extra-positional"),
    (["--speed", "2"], "--speed"),
    (["--replay", "x.gz", "--speed", "0.1"], "--speed"),
    (["--replay", "x.gz", "--record", "y.gz"], "--replay"),
    (["--replay", "x.gz", "--ebpf"], "--ebpf"),
    (["--demo", "--batch"], "--batch"),
    (["--demo", "--replay", "x.gz"], "--replay"),
    (["--once", "--record", "y.gz"], "--record"),
    (["--replay", "/nonexistent/rec.gz", "--batch"], "/nonexistent/rec.gz"),
    (["--replay", "/", "--batch"], "/"),
    (["--batch", "--record", "/nonexistent-dir/rec.gz", "-n", "1", "--no-bpf"], "/nonexistent-dir/rec.gz"),
    (["lab", "run", "no-such-scenario"], "no-such-scenario"),
    (["lab", "frobnicate"], "frobnicate"),
    (["lab", "run", "no-accept", "--duration", "-3"], "--duration"),
]


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_flag_values(argv, names):
    proc = tcpq(*argv, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tcpq-top") and names in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("content, names", [
    (b"", "empty"),
    (b"not gzip at all", "line 1"),
    (b'{"schema": "tcpq-top.snapshot/1", "time": 1}\n', "line 1"),
], ids=["empty", "foreign", "a --json snapshot"])
def test_bad_recordings(tmp_path, content, names):
    path = tmp_path / "rec.gz"
    path.write_bytes(content)
    proc = tcpq("--replay", str(path), "--batch", timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_pid_is_one_line_and_exit_2():
    pid = 4194303  # above any pid_max default; /proc has no such entry
    r = tcpq("--once", "--no-bpf", "--pid", str(pid))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"tcpq-top: --pid {pid}: no such process"


def test_integer_limits_print_as_integers():
    r = tcpq("--batch", "-n", "0")
    assert r.returncode == 2 and "1000000000" in r.stderr and "e+" not in r.stderr


def test_version_and_help():
    r = tcpq("--version")
    assert r.returncode == 0 and r.stdout.startswith("tcpq-top ")
    h = tcpq("--help")
    assert h.returncode == 0
    for needle in ("examples:", "exit codes:", "keys", "--sort OVF/s", "2 bad input"):
        assert needle in h.stdout, needle


@pytest.mark.parametrize("name,key", [("OVF/s", "overflow_rate"), ("overflow_rate", "overflow_rate"),
                                      ("que/s", "queued_rate"), ("CL-WT", "close_wait"), ("severity", "severity")])
def test_sort_accepts_headers_and_names(name, key):
    from tcptop_q.cli import build_parser

    assert build_parser().parse_args(["--sort", name]).sort == key
