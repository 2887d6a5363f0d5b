#!/usr/bin/env python3
"""A private netns holding N listeners and M established + CLOSE_WAIT sockets, torn down on every exit path.

    with ScaleFixture(listeners=10_000, sockets=100_000) as fx:
        fx.python("bench/diag_parse.py", "--inner")   # runs inside the netns
        fx.exec(["ss", "-s"])

Layout inside `tq-bench-<pid>-<n>` (a tcptop_q.lab.netns.LabNetns):
- plain listeners on 127.0.0.1 / ::1 (every 5th on ::1), ports LISTEN_BASE.., spread over
  `procs` holder processes;
- sockets/2 loopback connections, both ends held open, spread over `procs` holder processes,
  each with its own accepting listener (CONN_BASE+w) and clients bound to 127.0.0.1..8
  (IP_BIND_ADDRESS_NO_PORT) with the netns' ephemeral range widened to 20000-65535;
- `close_wait_fraction` of them half-closed by the client after accept: server end CLOSE_WAIT,
  client end FIN_WAIT2 (held open, so it never times out);
- optionally `queued_close_wait` children left in one listener's accept queue and then
  half-closed: CLOSE_WAIT rows with inode 0 (nobody accepted them).
The accepting listeners count towards `listeners`.

Teardown: holders' stdin is closed (they exit), stragglers killed by pid, the netns deleted,
in a finally, on SIGTERM/SIGHUP (turned into SystemExit: tcptop_q.lifecycle.on_exit_signals) and
at exit.

CLI: `python bench/scale_fixture.py --listeners 10000 --sockets 100000` builds, prints the
kernel's own counts (ss) and the build time, tears down.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import selectors
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tcptop_q tree under test: the working tree, or (TQBENCH_TREE) an exported commit, so that
# edits in progress elsewhere in the tree do not change a benchmark half-way (run_all.py --head).
TREE = Path(os.environ.get("TQBENCH_TREE") or ROOT)
if os.environ.get("TQBENCH_TREE"):
    os.environ["PYTHONPATH"] = str(TREE)  # children (ip netns exec ..., python -m tcptop_q) too
sys.path.insert(0, str(TREE))
from tcptop_q import lifecycle  # noqa: E402
from tcptop_q.lab.netns import LabNetns  # noqa: E402

WORKER = ROOT / "bench" / "_scale_worker.py"
VENV_PY = ROOT / ".venv" / "bin" / "python"
LISTEN_BASE = 1024
CONN_BASE = 15000
QUEUED_PORT = 14000
EPHEMERAL = "20000 65535"

_live: list[ScaleFixture] = []


def python_exe() -> str:
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def results_dir() -> Path:
    """bench/results, or TQBENCH_RESULTS (run_all.py --quick writes its smoke results elsewhere)."""
    d = Path(os.environ.get("TQBENCH_RESULTS") or ROOT / "bench" / "results")
    d.mkdir(parents=True, exist_ok=True)
    return d


def tcpq_argv() -> list[str]:
    """tcpq-top as the console script runs it, from TREE."""
    return [python_exe(), "-m", "tcptop_q"]


def export_head(dest_root: str = "/tmp") -> str:
    """`git archive HEAD` into /tmp/tqbench-tree-<sha> (reused if there); returns its path."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    dest = Path(dest_root) / f"tqbench-tree-{sha}"
    if not (dest / "tcptop_q").is_dir():
        tmp = Path(f"{dest}.tmp{os.getpid()}")
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "tcptop_q"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(dest)
    return str(dest)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class FixtureError(RuntimeError):
    pass


class ScaleFixture:
    def __init__(
        self,
        listeners: int = 10_000,
        sockets: int = 100_000,
        *,
        close_wait_fraction: float = 0.1,
        queued_close_wait: int = 0,
        procs: int | None = None,
        ready_timeout: float = 300.0,
        max_life: float = 1800.0,
    ) -> None:
        if sockets % 2:
            raise ValueError("sockets counts both ends of each connection: give an even number")
        self.conns = sockets // 2
        if procs is None:
            # Each holder stays under the hard RLIMIT_NOFILE (raising it needs CAP_SYS_RESOURCE).
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            per = max(1000, min(hard, 1 << 20) - 512)
            procs = max(2, -(-(listeners + sockets) // (per - 2 * queued_close_wait)))
        self.holders = procs
        self.procs_n = procs if self.conns else 0  # one accepting listener per holder
        self.plain_listeners = listeners - self.procs_n
        if self.plain_listeners < 0 or listeners + LISTEN_BASE >= QUEUED_PORT:
            raise ValueError("listeners out of range")
        self.close_wait = int(self.conns * close_wait_fraction)
        self.queued_close_wait = queued_close_wait
        self.ready_timeout = ready_timeout
        self.max_life = max_life
        self.ns: LabNetns | None = None
        self.name = ""
        self.inode = 0
        self.procs: list[subprocess.Popen] = []
        self.build_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> ScaleFixture:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        t0 = time.monotonic()
        self.ns = LabNetns("bench")  # lo up; removed on close, at exit and by lab.netns.cleanup_all
        self.name, self.inode = self.ns.name, self.ns.inode
        _live.append(self)
        # Per-netns sysctls of our own netns only.
        self.exec(["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={EPHEMERAL}"])
        self.exec(["sysctl", "-q", "-w", "net.core.somaxconn=8192"])
        jobs: list[list[str]] = []
        base = LISTEN_BASE
        for n in split(self.plain_listeners, self.holders):
            jobs.append(["--listen-base", str(base), "--listen-count", str(n)])
            base += n
        if self.conns:
            for i, (n, cw) in enumerate(zip(split(self.conns, self.procs_n), split(self.close_wait, self.procs_n), strict=True)):
                jobs[i] += ["--conn-port", str(CONN_BASE + i), "--conns", str(n), "--close-wait", str(cw)]
        if self.queued_close_wait:
            jobs[0] += ["--queued-port", str(QUEUED_PORT), "--queued", str(self.queued_close_wait)]
        for job in jobs:
            argv = [*self.argv([]), sys.executable, str(WORKER), "--max-life", str(int(self.max_life)), *job]
            self.procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        sel = selectors.DefaultSelector()
        for p in self.procs:
            assert p.stdout is not None
            sel.register(p.stdout, selectors.EVENT_READ, p)
        waiting = set(self.procs)
        deadline = time.monotonic() + self.ready_timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FixtureError(f"holders not ready after {self.ready_timeout:.0f} s")
            for key, _ in sel.select(left):
                p = key.data
                line = p.stdout.readline()
                if not line:
                    raise FixtureError(f"holder {p.pid} exited with {p.wait()} before ready")
                if json.loads(line).get("ready"):
                    waiting.discard(p)
                    sel.unregister(p.stdout)
        sel.close()
        self.build_seconds = time.monotonic() - t0

    def close(self) -> None:
        for p in self.procs:
            try:
                if p.stdin:
                    p.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 20
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()  # our own child, by its Popen (pid)
                p.wait()
            if p.stdout:
                p.stdout.close()
        self.procs.clear()
        if self.ns is not None:
            ns, self.ns = self.ns, None
            ns.close()
        if self in _live:
            _live.remove(self)

    # ------------------------------------------------------------------ helpers
    @property
    def holder_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def argv(self, cmd: Sequence[str]) -> list[str]:
        assert self.ns is not None, "fixture not started"
        return self.ns.argv(cmd)

    def exec(self, cmd: Sequence[str], timeout: float = 300.0, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        return subprocess.run(self.argv(cmd), text=True, timeout=timeout, check=True, **kw)

    def python(self, script: str | Path, *args: str, timeout: float = 900.0) -> dict:
        """Run a bench script inside the netns; it prints one JSON object as its last stdout line."""
        out = self.exec([python_exe(), str(script), *args], timeout=timeout, capture_output=False,
                        stdout=subprocess.PIPE)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def state_counts(self) -> Counter:
        """The kernel's own counts, by ss state name."""
        out = self.exec(["ss", "-Htan"]).stdout
        return Counter(line.split(None, 1)[0] for line in out.splitlines() if line)

    def expected(self) -> dict[str, int]:
        est = 2 * self.conns - 2 * self.close_wait
        return {
            "LISTEN": self.plain_listeners + self.procs_n + (1 if self.queued_close_wait else 0),
            "ESTAB": est,
            "CLOSE-WAIT": self.close_wait + self.queued_close_wait,
            "FIN-WAIT-2": self.close_wait + self.queued_close_wait,
        }


def cleanup_all() -> None:
    for fx in list(_live):
        fx.close()


atexit.register(cleanup_all)


def install_signal_cleanup() -> None:
    """SIGTERM/SIGHUP unwind through SystemExit so every finally (and the fixture) runs."""
    lifecycle.on_exit_signals()


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "cpu": model,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--sockets", type=int, default=100_000)
    ap.add_argument("--queued-close-wait", type=int, default=0)
    ap.add_argument("--hold", type=float, default=0.0, help="seconds to keep it before teardown")
    args = ap.parse_args()
    install_signal_cleanup()
    with ScaleFixture(args.listeners, args.sockets, queued_close_wait=args.queued_close_wait) as fx:
        counts = fx.state_counts()
        print(json.dumps({"netns": fx.name, "inode": fx.inode, "build_s": round(fx.build_seconds, 2),
                          "ss": dict(counts), "expected": fx.expected()}))
        time.sleep(args.hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
