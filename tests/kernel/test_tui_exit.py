"""Every way out of the TUI restores the terminal and detaches the probes: q, Ctrl-C, SIGTERM,
SIGINT, and SIGHUP from a dropped session (tmux kill-session closes the pty)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, need
from tests.kernel.test_bpf_cli import loaded_programs, prog_ids_of
from tests.kernel.test_tui_tmux import tmux, wait_screen


def start(session: str, tmp_path, *args: str) -> int:
    pidfile = tmp_path / "pid"
    script = tmp_path / "run.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"cd {ROOT}\n"
        # In the foreground (a background job of a script would start with SIGINT ignored).
        f"bash -c 'echo $$ > {pidfile}; exec {sys.executable} -m tcptop_q {' '.join(args)}'\n"
        "echo EXITED=$?\n"
        "sleep 60\n"
    )
    script.chmod(0o755)
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "100", "-y", "30", str(script)], check=True)
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return int(pidfile.read_text())


def gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def session(root):
    need(shutil.which("tmux") is not None, "needs tmux")
    name = f"tqexit{os.getpid()}{time.monotonic_ns() % 100000}"
    yield name
    tmux("kill-session", "-t", name)


@pytest.mark.parametrize("how", ["q", "ctrl+c", "SIGTERM", "SIGINT", "SIGHUP", "kill-session"])
def test_every_exit_restores_the_terminal_and_detaches(session, tmp_path, how):
    pid = start(session, tmp_path, "--port", "1")
    wait_screen(session, lambda s: "BPF: live" in s, 90)
    held = prog_ids_of(pid)
    assert held, "probes attached while running"
    if how == "q":
        tmux("send-keys", "-t", session, "q")
    elif how == "ctrl+c":
        tmux("send-keys", "-t", session, "C-c")
    elif how == "kill-session":
        tmux("kill-session", "-t", session)  # the pty goes away: SIGHUP, as when ssh drops
    else:
        os.kill(pid, getattr(signal, how))
    assert gone(pid), f"tcpq-top still running after {how}"
    if how != "kill-session":
        text = wait_screen(session, lambda s: "EXITED=" in s, 10)
        assert "BPF: live" not in text and "LISTEN" not in text  # back from the alternate screen
        code = int(text.split("EXITED=")[1].split()[0])
        assert code in (0, 130, 128 + signal.SIGTERM, 128 + signal.SIGHUP), text
        assert "Traceback" not in text
    deadline = time.monotonic() + 5
    while held & loaded_programs().keys() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not held & loaded_programs().keys(), f"{how} left probes attached"


@pytest.mark.parametrize("how", ["q", "SIGTERM", "kill-session"])
def test_demo_removes_its_namespaces_and_processes_on_exit(session, tmp_path, how):
    pid = start(session, tmp_path, "--demo")
    wait_screen(session, lambda s: "BPF: live" in s and "8080" in s, 120)
    ours = [n.split()[0] for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
            if f"-{pid}-" in n]
    assert ours, "the demo runs in its own netns"
    inodes = {os.stat(f"/run/netns/{n}").st_ino for n in ours}
    if how == "q":
        tmux("send-keys", "-t", session, "q")
    elif how == "kill-session":
        tmux("kill-session", "-t", session)
    else:
        os.kill(pid, signal.SIGTERM)
    assert gone(pid, 30)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [n for n in ours if n in left], left
    # no process of the demo is left inside those namespaces
    deadline = time.monotonic() + 10
    def inside() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                        pids.append(int(entry))
                except OSError:
                    pass
        return pids
    while inside() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert inside() == []


@pytest.mark.parametrize("after", [0.3, 1.0, 2.5])
def test_pty_dropped_at_any_moment_of_start_up(root, after):
    """ssh drops while the UI is still starting (or the probes still loading): several at
    once, at several moments. Every process leaves, and leaves nothing attached."""
    need(shutil.which("tmux") is not None, "needs tmux")
    names = [f"tqdrop{os.getpid()}{i}{int(after * 10)}" for i in range(4)]
    pids = []
    for name in names:
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100", "-y", "30",
                        f"cd {ROOT} && exec {sys.executable} -m tcptop_q"], check=True)
        pids.append(int(tmux("list-panes", "-t", name, "-F", "#{pane_pid}").split()[0]))
    time.sleep(after)
    for name in names:
        tmux("kill-session", "-t", name)
    left = [pid for pid in pids if not gone(pid, 20)]
    for pid in left:  # do not leave them behind even when failing
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"{len(left)} of {len(pids)} still running after their pty closed"
