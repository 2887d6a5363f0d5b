"""Process names are attacker-controlled text: shown inert everywhere, never raw ESC/BEL bytes."""

from __future__ import annotations

import json
import sys

from tests.conftest import tcpq

HOSTILE_COMM = "\x1b]0;pwn\x07\x1b[2J\x9b"  # OSC title, BEL, CSI clear, C1 CSI (<= 15 bytes)

SERVER = r"""
import ctypes, socket, sys, time
name = sys.argv[1].encode("utf-8", "surrogateescape")[:15]
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
s = socket.socket(); s.bind(("127.0.0.1", 8090)); s.listen(3)
print("ready", flush=True); time.sleep(60)
"""


def test_hostile_comm_is_inert_in_batch_and_json(labns):
    import subprocess

    proc = labns.spawn([sys.executable, "-c", SERVER, HOSTILE_COMM], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    comm = labns.run(["cat", f"/proc/{proc.pid}/comm"]).stdout.rstrip("\n")
    assert "\x1b" in comm  # the kernel kept the escape bytes: the test means something

    batch = tcpq("--batch", "-n", "1", "-d", "0.1", "--no-bpf", "--wide", "--netns", str(labns.inode))
    assert batch.returncode == 0, batch.stderr
    assert "\x1b" not in batch.stdout and "\x07" not in batch.stdout and "\x9b" not in batch.stdout
    row = next(line for line in batch.stdout.splitlines() if "127.0.0.1:8090" in line)
    assert f"{proc.pid}/\\x1b]0;p" in row

    once = tcpq("--once", "--json", "--no-bpf", "--interval", "0.1", "--netns", str(labns.inode))
    assert "\x1b" not in once.stdout and "\x07" not in once.stdout  # JSON escapes controls
    lst = next(x for x in json.loads(once.stdout)["listeners"] if x["lport"] == 8090)
    assert lst["comm"] == comm  # the data itself is exact, only its rendering is inert


def test_tcpq_top_opens_no_listening_socket(labns):
    """While running, tcpq-top owns no LISTEN socket in any netns (checked with ss -p)."""
    import subprocess
    import time

    run = subprocess.Popen([sys.executable, "-m", "tcptop_q", "--batch", "-d", "0.2", "-n", "20"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(2.0)
        assert run.poll() is None, run.stderr.read()
        out = subprocess.run(["ss", "-Hlp", "-A", "inet,unix"], capture_output=True, text=True).stdout
        assert f"pid={run.pid}," not in out
        out_ns = labns.run(["ss", "-Hlp"]).stdout
        assert f"pid={run.pid}," not in out_ns
    finally:
        run.terminate()
        run.wait(timeout=30)
