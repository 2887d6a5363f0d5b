"""Socket inode -> owning process, from the /proc/<pid>/fd links.

A full walk of /proc/*/fd costs seconds on a host with 100k sockets, so the map
is kept between ticks: a walk happens only when a socket we must show has an
inode the map does not know, at most once per `min_rescan` seconds, and entries
of processes that have exited are dropped. Processes vanish mid-walk: every read
tolerates that.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

Owner = tuple[int, str]  # pid, comm


def read_comm(pid: int, proc: str = "/proc") -> str | None:
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None


class OwnerMap:
    def __init__(self, proc: str = "/proc", min_rescan: float = 2.0) -> None:
        self.proc = proc
        self.min_rescan = min_rescan
        self.by_inode: dict[int, Owner] = {}
        self.inodes_of: dict[int, list[int]] = {}  # pid -> its socket inodes
        self.last_walk = float("-inf")
        self.walk_seconds = 0.0
        self.permission_denied = 0  # processes whose fds we could not read
        self._walker: threading.Thread | None = None
        self._pending: set[int] = set()  # inodes the walk under way was started for
        self.unresolved: set[int] = set()  # wanted, but not found by the last walk
        self.backoff = min_rescan

    def walk(self) -> None:
        start = time.monotonic()
        found: dict[int, Owner] = {}
        denied = 0
        comms: dict[int, str | None] = {}
        for entry in os.scandir(self.proc):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            fd_dir = f"{self.proc}/{pid}/fd"
            try:
                fds = os.scandir(fd_dir)
            except PermissionError:
                denied += 1
                continue
            except OSError:
                continue
            with fds:
                for fd in fds:
                    try:
                        target = os.readlink(f"{fd_dir}/{fd.name}")
                    except OSError:
                        continue
                    if not target.startswith("socket:["):
                        continue
                    inode = int(target[8:-1])
                    if inode in found:
                        continue  # shared after fork: the lowest pid (first seen) owns it
                    if pid not in comms:
                        comms[pid] = read_comm(pid, self.proc)
                    comm = comms[pid]
                    if comm is not None:
                        found[inode] = (pid, comm)
        inodes_of: dict[int, list[int]] = {}
        for inode, (pid, _comm) in found.items():
            inodes_of.setdefault(pid, []).append(inode)
        self.by_inode, self.inodes_of = found, inodes_of
        self.unresolved = {i for i in self._pending if i not in found}
        self.permission_denied = denied
        self.last_walk = time.monotonic()
        self.walk_seconds = self.last_walk - start

    def resolve(self, inodes: Iterable[int], *, force: bool = False) -> dict[int, Owner]:
        """Owners of the given inodes (0 = no file yet: not looked up)."""
        wanted = {i for i in inodes if i}
        # Drop owners that have exited (one stat per process, not per socket);
        # their inodes will be looked up afresh.
        by_inode, inodes_of = self.by_inode, self.inodes_of  # a background walk may swap them
        dead = {pid for pid in inodes_of if not os.path.exists(f"{self.proc}/{pid}")}
        for pid in dead:
            for inode in inodes_of.pop(pid, ()):
                by_inode.pop(inode, None)
        missing = wanted - by_inode.keys()
        if missing and missing <= self.unresolved and not force:
            # The last walk could not find these (another user's process without
            # CAP_SYS_PTRACE, or a socket in flight): look again, but less and less often.
            due = time.monotonic() - self.last_walk >= self.backoff
        else:
            due = force or time.monotonic() - self.last_walk >= self.min_rescan
        if missing and due:
            if missing <= self.unresolved:
                self.backoff = min(60.0, self.backoff * 2)
            else:
                self.backoff = self.min_rescan
            self._pending = set(missing)
            if force:
                self.walk()
                by_inode = self.by_inode
            else:
                self._walk_in_background()
        return {i: by_inode[i] for i in wanted if i in by_inode}

    def _walk_in_background(self) -> None:
        """A walk costs ~0.6 s at 110k sockets: never on the tick that asked for it. Until it
        ends, the owners it will find are unknown (shown as such), not guessed."""
        if self._walker is not None and self._walker.is_alive():
            return
        self.last_walk = time.monotonic()
        self._walker = threading.Thread(target=self.walk, name="tcpq-owners", daemon=True)
        self._walker.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._walker is not None:
            self._walker.join(timeout)
