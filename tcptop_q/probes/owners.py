"""Socket inode -> the processes that hold it, from the /proc/<pid>/fd links.

A full walk of /proc/*/fd costs seconds on a host with 100k sockets (docs/BENCHMARKS.md), so
the map is kept between ticks and brought up to date by three kinds of work, all in the
background (never on the tick that asked) and each linear in what it looks at:

- a *check* every `check_every` seconds (20x its cost, at least `min_rescan`): every holder
  of a socket we show (listeners, CLOSE_WAIT) is verified with one readlink of the fd it was found at (a process that
  closed its copy, exited, or is a zombie, whose fds are gone, stops being a holder), and
  only the processes that are new since the last listing of /proc have their fds read
  (workers forked from a listener's owner);
- a *full walk* when a socket we show has no known holder (a new listener, or one whose
  holders all let go: an fd handed over with SCM_RIGHTS), at most every `min_rescan`
  seconds, backing off for inodes a walk could not find;
- a full walk every `period` seconds (50x its own cost, between `min_rescan` and 30 s: ~2%
  of a core), which finds holders that appear in processes that already existed (an fd
  received over a unix socket while the sender keeps its copy).

So a change of holders shows within one `period`. The primary owner of a socket (`by_inode`,
Listener.pid/comm) is its lowest holding pid: the master of a pre-fork server while it keeps
its copy, its lowest worker once it closed it. Processes vanish mid-walk: every read
tolerates that.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

Owner = tuple[int, str]  # pid, comm
Holders = tuple[tuple[int, int], ...]  # ((pid, fd), ...) ascending by pid

MAX_PERIOD = 30.0
COST_FACTOR = 50  # a full walk every 50x its cost: ~2% of one core
CHECK_FACTOR = 20  # a check every 20x its cost (at least min_rescan): ~5% of one core at most


def read_comm(pid: int, proc: str = "/proc") -> str | None:
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None


def is_zombie(pid: int, proc: str = "/proc") -> bool:
    """True for an exited process nobody reaped yet (or one that is gone): it holds no fds."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    # comm may hold spaces and parentheses: the state follows the last ')'.
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def _pids(proc: str) -> list[int]:
    return sorted(int(e.name) for e in os.scandir(proc) if e.name.isdigit())


class _Scan:
    """What reading the fds of some processes found."""

    def __init__(self, by_inode: dict[int, Owner], wanted: frozenset[int]) -> None:
        self.by_inode = by_inode
        self.wanted = wanted
        self.holders: dict[int, list[tuple[int, int]]] = {}
        self.assigned: list[tuple[int, int]] = []  # (inode, pid) that became a primary owner
        self.denied = 0

    def pid(self, proc: str, pid: int) -> None:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.scandir(fd_dir)
        except PermissionError:
            self.denied += 1
            return
        except OSError:
            return
        comm: str | None = None
        seen: set[int] = set()
        with fds:
            for fd in fds:
                try:
                    target = os.readlink(f"{fd_dir}/{fd.name}")
                except OSError:
                    continue
                if not target.startswith("socket:["):
                    continue
                inode = int(target[8:-1])
                if inode in seen:
                    continue  # a dup() of a socket this process already holds
                seen.add(inode)
                if comm is None:
                    comm = read_comm(pid, proc)
                    if comm is None:
                        return  # exited while we read it
                first = self.by_inode.get(inode)
                if first is None or first[0] > pid:
                    self.by_inode[inode] = (pid, comm)
                    self.assigned.append((inode, pid))
                if inode in self.wanted:
                    self.holders.setdefault(inode, []).append((pid, int(fd.name)))


class OwnerMap:
    def __init__(self, proc: str = "/proc", min_rescan: float = 2.0) -> None:
        self.proc = proc
        self.min_rescan = min_rescan
        self.by_inode: dict[int, Owner] = {}  # every socket inode seen -> its lowest holding pid
        self.inodes_of: dict[int, list[int]] = {}  # pid -> the inodes it is the primary owner of
        # Sockets we show -> all their holders, with the fd each was found at (for the check).
        self.holders: dict[int, Holders] = {}
        self.comm: dict[int, str] = {}  # comm of every pid in `holders`
        self.last_walk = float("-inf")
        self.last_check = float("-inf")
        self.walk_seconds = 0.0
        self.check_seconds = 0.0
        self.permission_denied = 0  # processes whose fds we could not read
        self._walker: threading.Thread | None = None
        self._pending: set[int] = set()  # inodes the walk under way was started for
        self._wanted: frozenset[int] = frozenset()
        self._listed: set[int] = set()  # pids of the last listing of /proc
        self.unresolved: set[int] = set()  # wanted, but not found by the last walk
        self.backoff = min_rescan

    @property
    def period(self) -> float:
        """Seconds between full walks: the longest a change of holders can take to show."""
        return min(MAX_PERIOD, max(self.min_rescan, COST_FACTOR * self.walk_seconds, self.check_every))

    @property
    def check_every(self) -> float:
        """Seconds between checks (5 µs per holder verified: 150 ms at 15k shown sockets)."""
        return min(MAX_PERIOD, max(self.min_rescan, CHECK_FACTOR * self.check_seconds))

    # ---- the work (on the background thread, or on the caller's with force)

    def walk(self) -> None:
        """Read the fds of every process."""
        start = time.monotonic()
        wanted = self._wanted
        pids = _pids(self.proc)
        scan = _Scan({}, wanted)
        for pid in pids:
            scan.pid(self.proc, pid)
        self._install(scan.by_inode, {i: tuple(h) for i, h in scan.holders.items()}, pids)
        self.unresolved = {i for i in self._pending if i not in self.holders}
        self.permission_denied = scan.denied
        self.last_walk = time.monotonic()
        self.walk_seconds = self.last_walk - start

    def check(self) -> None:
        """Verify the holders of the sockets we show; read the fds of new processes only."""
        start = time.monotonic()
        wanted = self._wanted
        pids = _pids(self.proc)
        listed = set(pids)
        # Copies: the collector reads the old ones meanwhile. inodes_of is kept up to date
        # incrementally (rebuilding it costs as much as the rest of the check at 100k sockets).
        by_inode = dict(self.by_inode)
        inodes_of = dict(self.inodes_of)
        for pid in list(inodes_of):
            if pid not in listed or is_zombie(pid, self.proc):
                for inode in inodes_of.pop(pid):
                    if by_inode.get(inode, (0,))[0] == pid:
                        del by_inode[inode]
        holders: dict[int, list[tuple[int, int]]] = {}
        for inode, held in self.holders.items():
            if inode not in wanted:
                continue
            link = f"socket:[{inode}]"
            kept = []
            for pid, fd in held:
                try:
                    if os.readlink(f"{self.proc}/{pid}/fd/{fd}") == link:
                        kept.append((pid, fd))
                except OSError:
                    pass  # closed, exited, or a zombie (its fds are released at exit)
            if kept:
                holders[inode] = kept
        scan = _Scan(by_inode, wanted)
        scan.holders = holders
        for pid in pids:
            if pid not in self._listed:
                scan.pid(self.proc, pid)
        for inode in wanted:
            kept_holders = holders.get(inode)
            if kept_holders:
                kept_holders.sort()
                pid = kept_holders[0][0]
                if by_inode.get(inode, (0,))[0] != pid:
                    comm = self.comm.get(pid) or read_comm(pid, self.proc)
                    if comm is not None:
                        by_inode[inode] = (pid, comm)
                        scan.assigned.append((inode, pid))
            else:
                by_inode.pop(inode, None)
        for inode, pid in scan.assigned:
            if by_inode.get(inode, (0,))[0] == pid:
                inodes_of[pid] = [*inodes_of.get(pid, ()), inode]  # a new list: the old map shares the rest
        self._install(by_inode, {i: tuple(h) for i, h in holders.items()}, pids, inodes_of)
        self.last_check = time.monotonic()
        self.check_seconds = self.last_check - start

    def _install(
        self, by_inode: dict[int, Owner], holders: dict[int, Holders], pids: list[int],
        inodes_of: dict[int, list[int]] | None = None,
    ) -> None:
        if inodes_of is None:
            inodes_of = {}
            for inode, (pid, _comm) in by_inode.items():
                inodes_of.setdefault(pid, []).append(inode)
        comm: dict[int, str] = {}
        for held in holders.values():
            for pid, _fd in held:
                if pid not in comm:
                    name = self.comm.get(pid) or read_comm(pid, self.proc)
                    if name is not None:
                        comm[pid] = name
        # One assignment each: the collector reads whole dicts, old or new, never a half.
        self.by_inode, self.inodes_of, self.holders, self.comm = by_inode, inodes_of, holders, comm
        self._listed = set(pids)

    # ---- what the sampler calls

    def resolve(self, inodes: Iterable[int], *, force: bool = False) -> dict[int, Owner]:
        """Primary owners of the given inodes (0 = no file yet: not looked up); starts the
        walk or check that is due (in the background, or now with force)."""
        wanted = frozenset(i for i in inodes if i)
        self._wanted = wanted
        # Drop owners that have exited (one stat per process, not per socket);
        # their inodes will be looked up afresh.
        by_inode, inodes_of = self.by_inode, self.inodes_of  # a background walk may swap them
        dead = {pid for pid in inodes_of if not os.path.exists(f"{self.proc}/{pid}")}
        for pid in dead:
            for inode in inodes_of.pop(pid, ()):
                if by_inode.get(inode, (0,))[0] == pid:  # a check may have named another holder since
                    by_inode.pop(inode, None)
        now = time.monotonic()
        missing = wanted - self.holders.keys()
        if missing and missing <= self.unresolved and not force:
            # The last walk could not find these (another user's process without
            # CAP_SYS_PTRACE, or a socket in flight): look again, but less and less often.
            due = now - self.last_walk >= self.backoff
        else:
            due = force or now - self.last_walk >= self.min_rescan
        if missing and due:
            if missing <= self.unresolved:
                self.backoff = min(60.0, self.backoff * 2)
            else:
                self.backoff = self.min_rescan
            self._pending = set(missing)
            self._run(self.walk, force)
        elif wanted and now - self.last_walk >= self.period:
            self._pending = set()
            self._run(self.walk, force)
        elif wanted and now - self.last_check >= self.check_every and now - self.last_walk >= self.min_rescan:
            self._run(self.check, force)
        by_inode = self.by_inode
        return {i: by_inode[i] for i in wanted if i in by_inode}

    def holders_of(self, inode: int) -> tuple[int, ...] | None:
        """Every pid that holds the socket, ascending; None when none is known."""
        held = self.holders.get(inode)
        if not held:
            return None
        return tuple(pid for pid, _fd in held)

    def _run(self, job, force: bool) -> None:
        """A walk costs ~0.6 s at 110k sockets: never on the tick that asked for it. Until it
        ends, the owners it will find are unknown (shown as such), not guessed."""
        if force:
            self.wait()
            job()
            return
        if self._walker is not None and self._walker.is_alive():
            return
        now = time.monotonic()
        if job == self.walk:
            self.last_walk = now
        self.last_check = now
        self._walker = threading.Thread(target=job, name="tcpq-owners", daemon=True)
        self._walker.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._walker is not None:
            self._walker.join(timeout)
