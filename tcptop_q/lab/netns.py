"""A private network namespace for lab scenarios and tests, removed on every exit path.

Traffic stays on the namespace's own loopback. Processes started in it are
tracked by pid and ended (only those) before the namespace is deleted.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

CLONE_NEWNET = 0x40000000

_counter = itertools.count()
_live: dict[str, LabNetns] = {}


class LabError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class LabNetns:
    """`ip netns add` + lo up; `exec`/`spawn` inside it; `close` removes everything."""

    def __init__(self, purpose: str = "lab") -> None:
        self.name = f"tq-{purpose}-{os.getpid()}-{next(_counter)}"
        self.procs: list[subprocess.Popen] = []
        try:
            _ip("netns", "add", self.name)
        except FileNotFoundError as exc:
            raise LabError("the `ip` command (iproute2) is not installed") from exc
        except subprocess.CalledProcessError as exc:
            raise LabError(f"cannot create netns {self.name}: {exc.stderr.strip()}") from exc
        _live[self.name] = self
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            self.inode = os.stat(f"/run/netns/{self.name}").st_ino
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LabNetns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a thread that entered the netns (network namespaces are per thread);
        its exception is raised here. Sockets made this way stay in the netns."""
        result: list = []
        error: list[BaseException] = []

        def body() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                result.append(fn(*args))
            except BaseException as exc:  # re-raised in the caller
                error.append(exc)

        t = threading.Thread(target=body, name=f"{self.name}-call")
        t.start()
        t.join()
        if error:
            raise error[0]
        return result[0]

    def socket(self, family: int = socket.AF_INET) -> socket.socket:
        """A TCP socket of this netns, usable from any thread of this process."""
        return self.call(socket.socket, family, socket.SOCK_STREAM)  # type: ignore[no-any-return]

    def exec(self, *cmd: str) -> str:
        """A command's stdout, run inside the netns (fails on a non-zero exit)."""
        return self.run(cmd).stdout

    def netstat(self) -> dict[str, int]:
        """/proc/net/netstat of the netns as the kernel prints it: {"TcpExtListenOverflows": n, ...}."""
        lines = self.exec("cat", "/proc/net/netstat").splitlines()
        out: dict[str, int] = {}
        for head, vals in zip(lines[::2], lines[1::2], strict=True):
            prefix = head.split(":")[0]
            for k, v in zip(head.split()[1:], vals.split()[1:], strict=True):
                out[f"{prefix}{k}"] = int(v)
        return out

    def run(self, cmd: Sequence[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout, check=check)

    def spawn(self, cmd: Sequence[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(cmd), **kw)
        self.procs.append(proc)
        return proc

    def serve(self, timeout: float = 10.0, **opts: object) -> subprocess.Popen:
        """Start a lab server (tcptop_q.lab.worker serve) in the netns; return once it listens."""
        proc = self.spawn(_worker_argv("serve", opts), stdout=subprocess.PIPE, text=True)
        _wait_ready(proc, timeout, f"lab server did not start in {self.name}")
        return proc

    def worker(self, cmd: str, *, ready: bool = False, timeout: float = 10.0, **opts: object) -> subprocess.Popen:
        """Start a lab worker in the background, in its own session (a terminal's Ctrl-C reaches
        only the lab command, which then ends the workers itself); with ready=True, wait for it
        to print "ready". Its output is discarded unless TCPQ_LAB_DEBUG is set."""
        quiet = None if os.environ.get("TCPQ_LAB_DEBUG") else subprocess.DEVNULL
        proc = self.spawn(
            _worker_argv(cmd, opts), stdout=subprocess.PIPE if ready else quiet, stderr=quiet,
            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        if ready:
            _wait_ready(proc, timeout, f"lab {cmd} did not start in {self.name}")
        return proc

    def pids(self) -> list[int]:
        """Every process whose network namespace is this one (`ip netns pids`)."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def clients(self, timeout: float = 60.0, **opts: object) -> int:
        """Run lab clients to completion in the netns; return how many connected."""
        out = self.run(_worker_argv("clients", opts), timeout=timeout).stdout
        return int(out.split()[-1])

    def tcpext(self) -> dict[str, int]:
        """The netns' TcpExt counters as the kernel's own nstat reports them."""
        out = self.run(["nstat", "-a", "-s", "-z", "-j"]).stdout
        import json

        data = json.loads(out)
        counters = data.get("kernel", data)
        return {k[len("TcpExt"):]: int(v) for k, v in counters.items() if k.startswith("TcpExt")}

    def sysctl(self, name: str, value: str | None = None) -> str:
        path = "/proc/sys/" + name.replace(".", "/")
        if value is not None:
            self.run(["sh", "-c", f"echo {value} > {path}"])
        return self.run(["cat", path]).stdout.strip()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if _live.pop(self.name, None) is not None:
            # ip netns delete unmounts; the netns itself goes when nothing pins it.
            _ip("netns", "delete", self.name, check=False)


def _wait_ready(proc: subprocess.Popen, timeout: float, error: str) -> None:
    """Wait (up to timeout s) for a worker's first stdout line to be "ready"; LabError otherwise."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout) or proc.stdout.readline().strip() != "ready":
            raise LabError(error)
    finally:
        sel.close()


def _worker_argv(cmd: str, opts: dict) -> list[str]:
    argv = [sys.executable, "-m", "tcptop_q.lab.worker", cmd]
    for key, value in opts.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def cleanup_all() -> None:
    for ns in list(_live.values()):
        ns.close()


atexit.register(cleanup_all)


def install_signal_cleanup() -> None:
    """SIGTERM/SIGHUP end the process through SystemExit, so finally blocks and atexit run."""
    from tcptop_q import lifecycle

    lifecycle.on_exit_signals()
