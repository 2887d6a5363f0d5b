"""lifecycle.on_exit_signals: the one SIGTERM/SIGHUP installer (cli, app, lab, benchmarks)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import os, signal, sys, threading
from tcptop_q import lifecycle
t = threading.Thread(target=lambda: print(lifecycle.on_exit_signals(), flush=True))  # off the main thread: False
t.start()
t.join()
assert lifecycle.on_exit_signals()
try:
    print("ready", flush=True)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    signal.pause()
finally:
    print("finally ran", flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signal_unwinds_through_finally_with_128_plus_signal(sig):
    proc = subprocess.run([sys.executable, "-c", CHILD, sig], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    assert proc.stdout.split() == ["False", "ready", "finally", "ran"]
