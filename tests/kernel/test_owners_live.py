"""Owners in the live view (not --once): after a fork-and-exit, a pre-fork master closing its
copy and an SCM_RIGHTS hand-over, the live sampler names the current holders, all of them,
within one owner-walk period (issue 17). Real processes in the test's own netns."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PORT = 8093

PRELUDE = f"""
import os, signal, socket, sys, time
signal.alarm(90)  # every process of this test ends by itself
def listen():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", {PORT}))
    s.listen(8)
    return s
def say(*words):
    print(*words, flush=True)
def wait():
    sys.stdin.readline()
def stay():
    signal.alarm(90)
    time.sleep(90)
    os._exit(0)
"""

FORK_EXIT = PRELUDE + """
s = listen()
say(os.getpid())
wait()
child = os.fork()
if child == 0:
    stay()
say(child)
os._exit(0)  # the parent exits: a zombie until the test reaps it
"""

PREFORK = PRELUDE + """
s = listen()
say(os.getpid())
wait()
workers = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        stay()
    workers.append(pid)
say(*workers)
wait()
s.close()  # the master closes its copy; the workers keep theirs
say("closed")
wait()
"""

SCM_RIGHTS = PRELUDE + """
a, b = socket.socketpair()
receiver = os.fork()
if receiver == 0:  # exists before the listener does: a process the owner map already knows
    a.close()
    _msg, fds, _flags, _addr = socket.recv_fds(b, 16, 4)
    b.send(b"got")
    stay()
b.close()
say(os.getpid(), receiver)
wait()
s = listen()
say("listening")
wait()
socket.send_fds(a, [b"x"], [s.fileno()])
assert a.recv(3) == b"got"
say("sent")
wait()
s.close()  # handed over: the sender lets go
say("closed")
wait()
"""


class Holder:
    """A script in the netns, driven line by line over stdin; every pid it forks ends with it."""

    def __init__(self, labns, script: str) -> None:
        self.proc = labns.spawn([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        self.forked: list[int] = []

    def line(self) -> list[str]:
        return self.proc.stdout.readline().split()

    def send(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        for pid in self.forked:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


def listener(snap):
    found = [x for x in snap.listeners if x.lport == PORT]
    return found[0] if len(found) == 1 else None


def until_holders(sampler, holders: tuple[int, ...], since: float):
    """Sample every 0.2 s until the listener's holders are `holders` and its pid the lowest;
    fail when one owner-walk period has passed, plus the time the walk or check itself takes
    (on a loaded 2-core machine: measured, not guessed) and the tick that shows its result."""
    while True:
        snap = sampler.sample(0.2)
        lst = listener(snap)
        if lst is not None and lst.holders == holders and lst.pid == min(holders):
            return time.monotonic() - since
        om = sampler.owners
        limit = om.period + 2 * max(om.walk_seconds, om.check_seconds) + 1.0
        assert time.monotonic() - since < limit, (
            f"after {limit:.1f} s (period {om.period:.1f}, walk {om.walk_seconds:.2f} s, check "
            f"{om.check_seconds:.2f} s): holders {lst and lst.holders} pid {lst and lst.pid}, want {holders}")
        time.sleep(0.2)


def live_sampler(labns):
    from tcptop_q.sampler import Sampler

    return Sampler(netns=labns.inode)  # not blocking_owners: the walks run in the background, as live


def state_of(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_fork_and_exit_names_the_child_not_the_zombie(labns):
    h = Holder(labns, FORK_EXIT)
    sampler = live_sampler(labns)
    try:
        parent = int(h.line()[0])
        until_holders(sampler, (parent,), time.monotonic())
        h.send()
        child = int(h.line()[0])
        h.forked.append(child)
        since = time.monotonic()
        while state_of(parent) != "Z":  # exited, not reaped: a zombie parent
            assert time.monotonic() - since < 10
            time.sleep(0.02)
        until_holders(sampler, (child,), since)
        assert state_of(parent) == "Z"  # still a zombie: it was never counted as a holder
    finally:
        sampler.close()
        h.close()


def test_prefork_master_closes_its_copy(labns):
    h = Holder(labns, PREFORK)
    sampler = live_sampler(labns)
    try:
        master = int(h.line()[0])
        until_holders(sampler, (master,), time.monotonic())
        h.send()
        workers = [int(p) for p in h.line()]
        h.forked += workers
        until_holders(sampler, tuple(sorted([master, *workers])), time.monotonic())
        h.send()
        assert h.line() == ["closed"]
        until_holders(sampler, tuple(sorted(workers)), time.monotonic())
        assert os.path.exists(f"/proc/{master}") and state_of(master) != "Z"  # alive, holds nothing
    finally:
        sampler.close()
        h.close()


def test_scm_rights_hand_over(labns):
    h = Holder(labns, SCM_RIGHTS)
    sampler = live_sampler(labns)
    try:
        sender, receiver = (int(p) for p in h.line())
        h.forked.append(receiver)
        sampler.sample(0.2)
        h.send()
        assert h.line() == ["listening"]
        until_holders(sampler, (sender,), time.monotonic())
        h.send()
        assert h.line() == ["sent"]
        # The receiver existed before: only a walk of every process finds its new fd.
        until_holders(sampler, tuple(sorted([sender, receiver])), time.monotonic())
        h.send()
        assert h.line() == ["closed"]
        until_holders(sampler, (receiver,), time.monotonic())
    finally:
        sampler.close()
        h.close()
