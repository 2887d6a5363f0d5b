"""TcpExt counters (/proc/net/netstat) and the listen-related sysctls of one netns.

Both are read through file descriptors opened inside the netns: /proc net files
and net sysctls stay bound to the namespace of the opener.
"""

from __future__ import annotations

import os

SYSCTLS = {
    "somaxconn": "/proc/sys/net/core/somaxconn",
    "tcp_max_syn_backlog": "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    "tcp_syncookies": "/proc/sys/net/ipv4/tcp_syncookies",
    "tcp_abort_on_overflow": "/proc/sys/net/ipv4/tcp_abort_on_overflow",
}


def parse_netstat(text: str, section: str = "TcpExt") -> dict[str, int]:
    """Parse the header/value line pairs of /proc/net/netstat for one section."""
    lines = text.splitlines()
    prefix = section + ":"
    out: dict[str, int] = {}
    for i in range(len(lines) - 1):
        if lines[i].startswith(prefix) and lines[i + 1].startswith(prefix):
            names = lines[i].split()[1:]
            values = lines[i + 1].split()[1:]
            for name, value in zip(names, values, strict=False):
                out[name] = int(value)
            break
    return out


def _pread_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 65536, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class NetnsFiles:
    """Open this thread's netns' netstat and sysctl files; re-read them cheaply later."""

    def __init__(self) -> None:
        self.netstat_fd: int | None = os.open("/proc/thread-self/net/netstat", os.O_RDONLY | os.O_CLOEXEC)
        self.sysctl_fds: dict[str, int] = {}
        for name, path in SYSCTLS.items():
            try:
                self.sysctl_fds[name] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # older kernels lack some; the UI shows what exists

    def tcpext(self) -> dict[str, int]:
        assert self.netstat_fd is not None
        return parse_netstat(_pread_all(self.netstat_fd).decode("ascii", "replace"))

    def sysctls(self) -> dict[str, int]:
        out = {}
        for name, fd in self.sysctl_fds.items():
            try:
                out[name] = int(os.pread(fd, 64, 0).split()[0])
            except (OSError, ValueError, IndexError):
                continue
        return out

    def close(self) -> None:
        if self.netstat_fd is not None:
            os.close(self.netstat_fd)
            self.netstat_fd = None
        for fd in self.sysctl_fds.values():
            os.close(fd)
        self.sysctl_fds.clear()
