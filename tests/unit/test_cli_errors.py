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
]


@pytest.mark.parametrize("argv, names", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_flag_values(argv, names):
    proc = tcpq(*argv, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tcpq-top: ") and names in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
