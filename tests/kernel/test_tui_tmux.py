"""End to end as a user sees it: the real TUI in tmux, as root, against seed experiment 1."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, need
from tests.kernel.test_bpf_cli import loaded_programs, prog_ids_of


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-t", session, "-p")


def wait_screen(session: str, pred, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(session)
        if pred(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"screen never matched; last screen:\n{text}")


@pytest.fixture
def session(root):
    need(shutil.which("tmux") is not None, "needs tmux")
    name = f"tqtest{id(object())}"
    yield name
    tmux("kill-session", "-t", name)


def test_tui_in_tmux_finds_the_overflowing_listener(labns, session):
    server = labns.serve(addr="0.0.0.0", port=8080, backlog=5, mode="no-accept")
    cmd = f"cd {ROOT} && exec {sys.executable} -m tcptop_q --netns {labns.inode}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "40", cmd], check=True)
    pid = int(tmux("list-panes", "-t", session, "-F", "#{pane_pid}").split()[0])
    wait_screen(session, lambda s: "BPF: live" in s or "BPF: off" in s)
    # Clients that keep retrying their SYNs while we look: drops rise on screen.
    labns.spawn([sys.executable, "-m", "tcptop_q.lab.worker", "clients", "--addr", "127.0.0.1", "--port", "8080",
                 "--count", "10", "--connect-timeout", "4", "--gap", "0.05"])
    row_re = re.compile(r"0\.0\.0\.0:8080\s+(\d+)\s+\S+\s+6/5\b.*")
    text = wait_screen(session, lambda s: bool(row_re.search(s)) and _drop_rate(row_re.search(s).group(0)) > 0, 30)
    row = row_re.search(text)
    assert int(row.group(1)) == server.pid
    held = prog_ids_of(pid)
    assert held, "the probes should be attached while the TUI runs"

    tmux("send-keys", "-t", session, "Enter")
    text = wait_screen(session, lambda s: f"pid {server.pid}" in s and "accept queue full" in s, 15)
    assert "6/5" in text
    # the listener screen at 120x40 shows the owner, the queue and child rows without scrolling
    assert "accept 6/5!" in text and re.search(r"127\.0\.0\.1:\d+\s+(ESTABLISHED|CLOSE_WAIT)", text), text

    tmux("send-keys", "-t", session, "q")
    deadline = time.monotonic() + 15
    while tmux("has-session", "-t", session) or subprocess.run(["tmux", "has-session", "-t", session]).returncode == 0:
        assert time.monotonic() < deadline, "q did not exit"
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while held & loaded_programs().keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not held & loaded_programs().keys(), "q left probes attached"


def _drop_rate(row: str) -> float:
    # columns after ACCEPT-Q bar: SYN-Q, DROP/s, ...
    cells = row.split()
    idx = next(i for i, c in enumerate(cells) if c.startswith("6/5"))
    nums = [c.rstrip("!") for c in cells[idx + 1:] if re.fullmatch(r"[\d.]+!?", c)]  # alarms end in !
    return float(nums[1]) if len(nums) > 1 else 0.0
