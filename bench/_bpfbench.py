"""Pieces the BPF cost benchmarks share (bench/accept_cost.py, accept_ab.py, hook_cost.py,
syscall_hook_cost.py): the getppid() loop that times one syscall, and bpftool's per-program
run statistics (kernel.bpf_stats_enabled must be on for run_cnt/run_time_ns to move)."""

from __future__ import annotations

import json
import subprocess

# One syscall that does next to nothing, timed in the process' own CPU time: what any attached
# syscall tracepoint adds to every syscall on the host.
LOOP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    struct timespec a, b;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def bpftool_progs() -> dict[int, dict]:
    """Every loaded BPF program by id, as `bpftool -j prog show` reports it."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    return {x["id"]: x for x in json.loads(out)}


def prog_deltas(before: dict[int, dict], after: dict[int, dict], ids: set[int]) -> dict[str, tuple[int, int]]:
    """(runs, run time in ns) between two bpftool_progs() readings, by program name, for the
    programs in ids that ran in between."""
    out: dict[str, tuple[int, int]] = {}
    for pid, pr in after.items():
        b = before.get(pid)
        if pid in ids and b is not None:
            runs = pr.get("run_cnt", 0) - b.get("run_cnt", 0)
            if runs:
                out[pr["name"]] = (runs, pr.get("run_time_ns", 0) - b.get("run_time_ns", 0))
    return out
