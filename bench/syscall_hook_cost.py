#!/usr/bin/env python3
"""What an accept() hook costs every other syscall on this host: CPU ns per getppid() call
(a C loop) with nothing attached, with a no-op program on the classic
syscalls:sys_exit_accept4 tracepoint (what probes/accept.bpf.c uses), and with a no-op
program on the raw tracepoint raw_syscalls:sys_exit that returns at once unless the
syscall is accept4 (reading its id from pt_regs). Both set the syscall-tracing flag on
every task; the raw one also runs its program on every syscall. Also the programs' own
ns per run (kernel.bpf_stats_enabled, restored after) during an accept4() loop on
loopback. Configurations alternate, medians of --reps. Root only.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _bpfbench import LOOP_C  # noqa: E402

CLASSIC = r"""
BPF_PERCPU_ARRAY(hits, u64, 1);
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) {
    int z = 0;
    u64 *v = hits.lookup(&z);
    if (v && args->ret >= 0) (*v)++;
    return 0;
}
"""

RAW = r"""
#include <uapi/linux/ptrace.h>
BPF_PERCPU_ARRAY(hits, u64, 1);
RAW_TRACEPOINT_PROBE(sys_exit) {
    // TP_PROTO(struct pt_regs *regs, long ret)
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long id = 0;
    bpf_probe_read_kernel(&id, sizeof(id), &regs->orig_ax);
    if (id != 288)  // __NR_accept4 on x86_64
        return 0;
    int z = 0;
    u64 *v = hits.lookup(&z);
    if (v && (long)ctx->args[1] >= 0) (*v)++;
    return 0;
}
"""


def accept_loop(n: int) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]

    def client() -> None:
        for _ in range(n):
            socket.create_connection(("127.0.0.1", port)).close()

    t = threading.Thread(target=client)
    t.start()
    for _ in range(n):
        c, _ = srv.accept()
        c.close()
    t.join()
    srv.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3_000_000)
    args = ap.parse_args()
    from bcc import BPF

    from tcptop_q.probes import loader

    src = loader.kernel_source_env()
    if src:
        os.environ["BCC_KERNEL_SOURCE"] = src
    tmp = tempfile.mkdtemp(prefix="tqbench-sys-")
    loop = os.path.join(tmp, "loop")
    Path(loop + ".c").write_text(LOOP_C)
    subprocess.run(["gcc", "-O2", "-o", loop, loop + ".c"], check=True)
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    ns: dict[str, list[float]] = {"none": [], "classic": [], "raw": []}
    per_run: dict[str, list[float]] = {"classic": [], "raw": []}
    try:
        stats.write_text("1")
        for rep in range(args.reps):
            for mode in (["none", "classic", "raw"] if rep % 2 == 0 else ["raw", "classic", "none"]):
                b = None
                if mode == "classic":
                    b = BPF(text=CLASSIC)
                elif mode == "raw":
                    b = BPF(text=RAW)
                try:
                    time.sleep(0.2)
                    ns[mode].append(float(subprocess.run([loop, str(args.calls)], capture_output=True, text=True,
                                                         check=True).stdout))
                    if b is not None:
                        fn = b.funcs[next(iter(b.funcs))] if b.funcs else None
                        fd = fn.fd if fn else None
                        before = _stats(fd)
                        accept_loop(2000)
                        after = _stats(fd)
                        if before and after and after[0] > before[0]:
                            per_run[mode].append((after[1] - before[1]) / (after[0] - before[0]))
                finally:
                    if b is not None:
                        b.cleanup()
            print(f"rep {rep}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in ns.items() if v), flush=True)
    finally:
        stats.write_text(old)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)
    for k, v in ns.items():
        print(f"getppid() CPU ns per call, {k}: median {statistics.median(v):.1f} (runs {v})")
    for k, v in per_run.items():
        if v:
            print(f"program ns per run, {k}: median {statistics.median(v):.0f} (runs {[round(x) for x in v]})")
    return 0


def _stats(fd: int | None) -> tuple[int, int] | None:
    """(run_cnt, run_time_ns) of a program fd, from /proc/self/fdinfo."""
    if fd is None:
        return None
    cnt = t = 0
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("run_cnt:"):
            cnt = int(line.split()[1])
        elif line.startswith("run_time_ns:"):
            t = int(line.split()[1])
    return cnt, t


if __name__ == "__main__":
    sys.exit(main())
