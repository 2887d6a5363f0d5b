#!/usr/bin/env python3
"""Kernel overhead on a connection storm: loopback connect/accept/close cycles per second
(bench/storm.c, fixed count, bounded time) in a private netns with
  none                       nothing attached (the baseline of every ratio)
  tcpq-top --batch --no-bpf  netlink polling only
  tcpq-top --batch           BPF probes live (default feed), polling every second
  tcpq-top --batch --accept-hook off   the same without accept tracking (accepted, accept
                             wait, handshake: probes/accept.bpf.c), to price it
  tcpq-top --batch (BPF, --tracepoints classic)   the same on trace-event tracepoints only
                             (the cost raw tracepoints save)
  tcpq-top TUI (tmux)        the real app in a tmux session (160x48, its own tmux server), BPF
                             live, the feed on until its policy pauses it under the storm
  tcpq-top TUI (tmux, --tracepoints classic)
  tcpstates-bpfcc            bcc's tcpstates attached, output to a file
tcpq-top and tcpstates run on the host (all netns, as an SRE would run them); each is started
per run and the storm begins only once it has printed its first line (probes attached).
Configurations are interleaved and rotated each repetition; medians of --reps.
Writes bench/results/storm_overhead.json and prints markdown. Root only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from scale_fixture import TREE, tcpq_argv  # noqa: E402  (also puts the tree under test on sys.path)

TCPQ = tcpq_argv()
TCPSTATES = "/usr/sbin/tcpstates-bpfcc"


def build(tmp: str) -> str:
    exe = os.path.join(tmp, "storm")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", exe, str(ROOT / "bench" / "storm.c")], check=True)
    return exe


class Tracer:
    """A tracer process we start, wait for (first output line), and stop by pid."""

    def __init__(self, argv: list[str], log: str, ready: bytes, env: dict | None = None,
                 ready_timeout: float = 120.0) -> None:
        self.log = log
        self.f = open(log, "wb")  # noqa: SIM115
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(argv, stdout=self.f, stderr=subprocess.DEVNULL, start_new_session=True,
                                  env={**os.environ, **(env or {})})
        while True:
            with open(log, "rb") as f:
                head = f.read(4096)
            if ready in head:
                break
            # tcpq-top printed a frame without its probes (it says why): no point waiting.
            failed = ready == b"bpf live" and b"bpf off" in head
            if failed or self.p.poll() is not None or time.monotonic() - self.t0 > ready_timeout:
                self.stop()
                raise RuntimeError(f"{argv[-1]} not ready: {open(log, 'rb').read()[-300:]!r}")
            time.sleep(0.05)
        self.ready_s = time.monotonic() - self.t0

    def alive(self) -> bool:
        return self.p.poll() is None

    def lines(self) -> int:
        with open(self.log, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)  # tcpstates: KeyboardInterrupt; tcpq-top: exits 130, detaching
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()  # by its pid
                self.p.wait()
        self.f.close()


class TmuxTracer:
    """The TUI in a detached tmux session on a tmux server of our own (-L), ready once the pane
    says the probes are live; stopped with `q` (the app detaches its probes), then the server
    is killed. Not our child: the storm's rusage excludes it, as it excludes --batch's."""

    def __init__(self, argv: list[str], env: dict, ready: str = "BPF: live", ready_timeout: float = 120.0) -> None:
        self.sock = f"tqstorm{os.getpid()}"
        self.t0 = time.monotonic()
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # cwd = the tree under test: `python -m` puts the cwd before PYTHONPATH on sys.path
        cmd = f"cd {shlex.quote(str(TREE))} && exec env {envs} {' '.join(shlex.quote(a) for a in argv)}"
        subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", "new-session", "-d", "-s", "tq", "-x", "160",
                        "-y", "48", cmd], check=True)
        self.pid = int(self._tmux("display-message", "-p", "-t", "tq", "#{pane_pid}").strip() or 0)
        while ready not in self.screen():
            if "BPF: off" in self.screen() or not self.alive() or time.monotonic() - self.t0 > ready_timeout:
                tail = self.screen()[-300:]
                self.stop()
                raise RuntimeError(f"TUI not ready: {tail!r}")
            time.sleep(0.1)
        self.ready_s = time.monotonic() - self.t0
        self.log = ""

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-t", "tq", "-p")

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return self.pid > 0

    def stop(self) -> None:
        self.last_screen = self.screen()
        self._tmux("send-keys", "-t", "tq", "q")
        deadline = time.monotonic() + 20
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)  # by its pid: the app's own handler detaches
            time.sleep(2)
        self._tmux("kill-server")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--max-seconds", type=float, default=15.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="configurations to run (besides none), by name prefix")
    ap.add_argument("--storm", help="a storm binary built elsewhere (the test VMs have no C headers)")
    ap.add_argument("--ready-timeout", type=float, default=120.0,
                    help="seconds a tracer may take to attach (bcc compiles for minutes under QEMU TCG)")
    args = ap.parse_args()
    from scale_fixture import ScaleFixture, install_signal_cleanup, machine

    install_signal_cleanup()
    tmp = tempfile.mkdtemp(prefix="tqbench-storm-")
    exe = args.storm or build(tmp)
    from tcptop_q.probes.kheaders import find_kernel_source

    ksrc, _why = find_kernel_source()  # bcc needs some headers; the project's merged tree works
    tenv = {"BCC_KERNEL_SOURCE": ksrc} if ksrc else {}
    # (argv, line that says the probes are attached)
    configs: dict[str, tuple[list[str], bytes] | None] = {
        "none": None,
        "tcpq-top --batch --no-bpf": ([*TCPQ, "--batch", "--no-bpf"], b"tcpq-top "),
        "tcpq-top --batch (BPF)": ([*TCPQ, "--batch"], b"bpf live"),
        "tcpq-top --batch (BPF, --accept-hook off)": ([*TCPQ, "--batch", "--accept-hook", "off"], b"bpf live"),
        "tcpq-top --batch (BPF, --tracepoints classic)": ([*TCPQ, "--batch", "--tracepoints", "classic"], b"bpf live"),
        "tcpq-top TUI (tmux)": ([*TCPQ], b"tmux"),
        "tcpq-top TUI (tmux, --tracepoints classic)": ([*TCPQ, "--tracepoints", "classic"], b"tmux"),
        "tcpstates-bpfcc": (["/usr/bin/python3", "-u", TCPSTATES], b"SKADDR"),
    }
    if args.only:
        configs = {k: v for k, v in configs.items() if k == "none" or any(k.startswith(o) for o in args.only)}
    runs: dict[str, list[float]] = {k: [] for k in configs}
    paired: dict[str, list[float]] = {k: [] for k in configs}
    per_cpu: dict[str, list[float]] = {k: [] for k in configs}
    paired_cpu: dict[str, list[float]] = {k: [] for k in configs}
    traced_lines: list[float] = []
    feed_paused: dict[str, list[bool]] = {}
    failures: list[str] = []
    ready: dict[str, list[float]] = {k: [] for k in configs}
    names = list(configs)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "tcptop_q"], capture_output=True,
                           text=True).stdout.strip()
    commit += "+dirty" if dirty and not os.environ.get("TQBENCH_TREE") else ""
    loadavg = [os.getloadavg()[0]]
    try:
        with ScaleFixture(listeners=0, sockets=0) as fx:
            storm = fx.argv([exe, str(args.count), str(args.max_seconds), "9100"])
            subprocess.run(fx.argv([exe, "2000", "5", "9100"]), check=True, capture_output=True)  # warm-up
            for rep in range(args.reps):
                order = names[rep % len(names):] + names[: rep % len(names)]
                this: dict[str, float] = {}
                this_cpu: dict[str, float] = {}
                for name in order:
                    cfg = configs[name]
                    try:
                        tracer: Tracer | TmuxTracer | None = None
                        if cfg and cfg[1] == b"tmux":
                            tenv_tui = {**tenv, "PYTHONPATH": os.environ.get("PYTHONPATH", str(TREE))}
                            tracer = TmuxTracer(cfg[0], tenv_tui, ready_timeout=args.ready_timeout)
                        elif cfg:
                            tracer = Tracer(cfg[0], os.path.join(tmp, "log"), cfg[1], tenv, args.ready_timeout)
                    except RuntimeError as exc:
                        print(f"rep {rep} {name}: skipped, {exc}", flush=True)
                        failures.append(f"{name}: {str(exc)[:200]}")
                        continue
                    try:
                        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        out = subprocess.run(storm, capture_output=True, text=True, check=True,
                                             timeout=args.max_seconds + 30).stdout.split()
                        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
                        if tracer and not tracer.alive():
                            raise RuntimeError(f"{name} died during the storm: run invalid")
                        if tracer and name == "tcpstates-bpfcc":
                            time.sleep(1.0)  # let it drain what it can
                            traced_lines.append(tracer.lines() / float(out[0]))
                    finally:
                        if tracer:
                            tracer.stop()
                            ready[name].append(tracer.ready_s)
                            if isinstance(tracer, TmuxTracer):
                                paused = "feed paused" in tracer.last_screen
                                feed_paused.setdefault(name, []).append(paused)
                            else:
                                os.unlink(tracer.log)
                    runs[name].append(float(out[2]))
                    this[name] = float(out[2])
                    # Cycles per CPU-second of the storm (its own CPU, softirqs and BPF programs
                    # included): far less sensitive than wall-clock throughput to other load.
                    per_cpu[name].append(float(out[0]) / cpu if cpu > 0 else float("nan"))
                    this_cpu[name] = per_cpu[name][-1]
                    print(f"rep {rep} {name}: {out[2]} cycles/s ({out[0]} in {out[1]} s), "
                          f"{per_cpu[name][-1]:.0f} cycles per CPU-s", flush=True)
                for name, v in this.items():
                    paired[name].append(v / this["none"])
                    paired_cpu[name].append(this_cpu[name] / this_cpu["none"])
                loadavg.append(os.getloadavg()[0])
                if failures:
                    print(f"{len(failures)} run(s) skipped so far", flush=True)
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    loadavg.append(os.getloadavg()[0])
    base = statistics.median(runs["none"])
    res = {k: {"runs": len(v), "median_cps": statistics.median(v), "ratio": statistics.median(v) / base, "all": v,
               "paired_ratio": statistics.median(paired[k]), "paired_all": [round(x, 3) for x in paired[k]],
               "ready_s": statistics.median(ready[k]) if ready[k] else None,
               "cycles_per_cpu_s": statistics.median(per_cpu[k]) if per_cpu[k] else None,
               "paired_cpu_ratio": statistics.median(paired_cpu[k]) if paired_cpu[k] else None,
               "paired_cpu_all": [round(x, 3) for x in paired_cpu[k]]} for k, v in runs.items()}
    out_dir = __import__("scale_fixture").results_dir()
    out_dir.mkdir(exist_ok=True)
    (out_dir / "storm_overhead.json").write_text(json.dumps({"machine": machine(), "count": args.count,
                                                             "reps": args.reps, "results": res,
                                                             "tcpstates_lines_per_cycle": traced_lines,
                                                             "tui_feed_paused_at_end": feed_paused,
                                                             "loadavg": loadavg,
                                                             "commit": commit,
                                                             "skipped": failures},
                                                            indent=1) + "\n")
    print("| attached | cycles/s (median) | median / median none | median of per-rep ratios | "
          "cycles per CPU-s, per-rep ratio | ready after (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in res.items():
        rd = f"{v['ready_s']:.1f}" if v["ready_s"] is not None else "-"
        cr = f"{v['paired_cpu_ratio']:.3f}x" if v["paired_cpu_ratio"] is not None else "-"
        print(f"| {k} | {v['median_cps']:.0f} | {v['ratio']:.2f}x | {v['paired_ratio']:.2f}x | {cr} | {rd} |")
    on, off = "tcpq-top --batch (BPF)", "tcpq-top --batch (BPF, --accept-hook off)"
    if paired.get(on) and paired.get(off):
        cost = [a / b for a, b in zip(paired[on], paired[off], strict=False)]
        cpu_cost = [a / b for a, b in zip(paired_cpu[on], paired_cpu[off], strict=False)]
        print(f"accept tracking: median per-rep throughput with / without = {statistics.median(cost):.3f} "
              f"(per rep {[round(x, 3) for x in cost]}); cycles per CPU-s with / without = "
              f"{statistics.median(cpu_cost):.3f} (per rep {[round(x, 3) for x in cpu_cost]})")
    print(f"commit {commit}; load average (1 min) at start, after each rep, at end: {loadavg}")
    if feed_paused:
        print(f"TUI feed paused at the end of each storm: {feed_paused}")
    if traced_lines:
        print(f"tcpstates printed {statistics.median(traced_lines):.2f} lines per cycle (a cycle is ~8 transitions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
