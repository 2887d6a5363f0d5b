"""Network namespaces: find them all, and hold per-netns readers opened inside each.

A netlink socket and a /proc/.../net file stay bound to the netns they were
opened in, so we enter a netns once (setns on this thread only), open what we
need, and return. Those open handles pin the netns, so handles of a netns that
no process and no /run/netns mount refers to any more are closed at once: the
tool must never keep a dead namespace alive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def current_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


@dataclass
class NetnsRef:
    inode: int
    path: str  # a path that names the netns: /proc/<pid>/ns/net or /run/netns/<name>
    pid: int | None = None  # a process inside it (None for a bare `ip netns` mount)
    names: list[str] = field(default_factory=list)  # `ip netns` names
    pids: list[int] = field(default_factory=list)  # every process in it we can see, ascending


def discover(proc: str = "/proc", run_netns: str = "/run/netns") -> dict[int, NetnsRef]:
    """Every network namespace reachable through /proc/*/ns/net and /run/netns, by inode."""
    found: dict[int, NetnsRef] = {}
    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(run_netns, name)
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        ref = found.setdefault(ino, NetnsRef(ino, path))
        ref.names.append(name)
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        path = f"{proc}/{entry.name}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:  # gone, or a kernel thread, or not ours to see
            continue
        pid = int(entry.name)
        known = found.get(ino)
        if known is None:
            found[ino] = known = NetnsRef(ino, path, pid)
        elif known.pid is None:
            known.pid = pid
        known.pids.append(pid)
    for ref in found.values():
        ref.pids.sort()  # scandir order is not numeric order
    return found


class NetnsEnterer:
    """Runs a function inside another netns on the calling thread, then comes back."""

    def __init__(self) -> None:
        self.home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.home = os.fstat(self.home_fd).st_ino

    def run_in(self, ref: NetnsRef, fn: Callable[[], T]) -> T:
        if ref.inode == self.home:
            return fn()
        fd = os.open(ref.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_ino != ref.inode:  # pid reused for another netns
                raise OSError(errno.ESTALE, "netns changed under its path")
            setns(fd)
        finally:
            os.close(fd)
        try:
            return fn()
        finally:
            # Coming home cannot fail for a thread that was there before; if it
            # did, this thread would read the wrong netns from now on: stop loudly.
            try:
                setns(self.home_fd)
            except OSError as exc:  # not an OSError to callers: they would take it for "cannot open"
                raise RuntimeError(f"could not return to the original network namespace: {exc}") from exc
            if current_netns() != self.home:
                raise RuntimeError("could not return to the original network namespace")

    def close(self) -> None:
        os.close(self.home_fd)
