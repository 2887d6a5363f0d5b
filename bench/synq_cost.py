#!/usr/bin/env python3
"""Cost of the tcp iterator walk (probes/synq.py) per tick, against the tick's own sock_diag
dump measured in the same run: one private netns with `--sockets` TCP sockets (bench/scale_fixture.py:
loopback connections, both ends held) and a 2-member SO_REUSEPORT group (the address that makes
the sampler walk that netns).

    sudo .venv/bin/python bench/synq_cost.py --sockets 1000 10000 --reps 15

Prints one JSON object per size: medians (ms) of the walk and of KernelReader.read() (the
per-tick dump of LISTEN, SYN_RECV, CLOSE_WAIT), their ratio, and the TCP sockets of the whole
host (a walk visits every one: the kernel's hash tables are global, filtered by netns).
Bounded: each size builds its fixture once, `--reps` walks and dumps, then tears it down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from scale_fixture import ScaleFixture, install_signal_cleanup, machine, med

GROUP = """
import socket, sys
socks = []
for _ in range(2):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 14500))
    s.listen(16)
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


def host_tcp_sockets() -> int:
    out = subprocess.run(["ss", "-s"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("TCP:"):
            return int(line.split()[1])
    return -1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    install_signal_cleanup()
    from tcptop_q.probes import loader
    from tcptop_q.probes.btf import Btf
    from tcptop_q.probes.synq import SynqIter
    from tcptop_q.sampler import KernelReader

    reason = loader.kernel_source_env()
    if reason:
        print(f"synq_cost: {reason}", file=sys.stderr)
        return 1
    bcc = loader.import_bcc()
    it = SynqIter(bcc, Btf.vmlinux())
    try:
        for n in args.sockets:
            with ScaleFixture(listeners=10, sockets=n, close_wait_fraction=0.0) as fx:
                group = subprocess.Popen([*fx.argv([sys.executable, "-c", GROUP])], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
                try:
                    assert group.stdout is not None and group.stdout.readline().strip() == "ready"
                    reader = KernelReader(netns=fx.inode)
                    try:
                        reader.read()  # handles opened, netns found
                        walks, dumps, listeners = [], [], 0
                        for _ in range(args.reps):
                            t0 = time.perf_counter()
                            reader.read()
                            t1 = time.perf_counter()
                            walk = reader.run_in(fx.inode, it.walk)
                            t2 = time.perf_counter()
                            dumps.append(t1 - t0)
                            walks.append(t2 - t1)
                            listeners = len(walk.qlen)
                    finally:
                        reader.close()
                finally:
                    if group.stdin:
                        group.stdin.close()
                    group.wait(timeout=10)
                print(json.dumps({
                    "sockets_in_netns": n, "host_tcp_sockets": host_tcp_sockets(), "listeners_walked": listeners,
                    "walk_ms": round(med(walks) * 1e3, 3), "dump_ms": round(med(dumps) * 1e3, 3),
                    "walk_over_dump": round(med(walks) / med(dumps), 3), "reps": args.reps, **machine(),
                }), flush=True)
    finally:
        it.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
