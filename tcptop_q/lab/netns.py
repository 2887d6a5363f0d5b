"""A private network namespace for lab scenarios and tests, removed on every exit path.

Traffic stays on the namespace's own loopback. Processes started in it are
tracked by pid and ended (only those) before the namespace is deleted.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

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

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, cmd: Sequence[str], timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(cmd), capture_output=True, text=True, timeout=timeout, check=check)

    def spawn(self, cmd: Sequence[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(cmd), **kw)
        self.procs.append(proc)
        return proc

    def serve(self, timeout: float = 10.0, **opts: object) -> subprocess.Popen:
        """Start a lab server (tcptop_q.lab.worker serve) in the netns; return once it listens."""
        proc = self.spawn(_worker_argv("serve", opts), stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout) or proc.stdout.readline().strip() != "ready":
            raise LabError(f"lab server did not start in {self.name}")
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
            assert proc.stdout is not None
            import selectors

            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout) or proc.stdout.readline().strip() != "ready":
                raise LabError(f"lab {cmd} did not start in {self.name}")
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

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
