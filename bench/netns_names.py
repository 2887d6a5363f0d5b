#!/usr/bin/env python3
"""Cost of naming network namespaces (tcptop_q/probes/names.py) per tick, at N netns (root).

Builds N real network namespaces, each holding one sleeping process (`unshare -n`): a third
are Docker containers (a real cgroup docker-<id>.scope + config.v2.json in a temp state root),
a third Kubernetes pods on containerd (real kubepods cgroups + k8s.io task config.json with
CRI annotations), a third `ip netns add` names. Then, interleaved per repetition:
  tick          Sampler.sample() over every netns (sock_diag + TcpExt in each), names included
  tick-nonames  the same Sampler with the naming pass replaced by `{}`: the baseline
  names-steady  NetnsNamer.names() alone, fresh pid lists from discovery (equal, not identical):
                what a tick adds while no netns' processes change
  names-cold    a new NetnsNamer: every netns named from scratch (cgroups + state files read),
                what the first tick (or a fleet of new containers) costs
Medians of --reps (the two sampler ticks alternate in order), ms of CPU (process time) and wall. Everything made is removed at the end.
Usage: bench/netns_names.py [--netns 100] [--reps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cgroup2() -> Path:
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] == "cgroup2":
                return Path(parts[1])
    raise SystemExit("no cgroup2 hierarchy mounted")


def _timed(fn) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - c0) * 1e3, (time.perf_counter() - w0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns", type=int, default=100)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, cgroups)")

    from tcptop_q.probes.names import NetnsNamer, StateRoots
    from tcptop_q.probes.netns import discover
    from tcptop_q.sampler import Sampler

    top = Path(tempfile.mkdtemp(prefix="tq-bench-names-"))
    base = _cgroup2() / f"tq-bench-names-{os.getpid()}"
    procs: list[subprocess.Popen] = []
    cgroups: list[Path] = []
    ipnetns: list[str] = []

    def cg(rel: str, pid: int) -> None:
        path = base / rel
        chain = [p for p in reversed([path, *path.parents]) if base in (p, *p.parents)]
        for p in chain:
            if not p.exists():
                p.mkdir()
                cgroups.append(p)
        (path / "cgroup.procs").write_text(str(pid))

    try:
        for i in range(args.netns):
            kind = i % 3
            if kind == 2:
                name = f"tq-bench-{os.getpid()}-{i}"
                subprocess.run(["ip", "netns", "add", name], check=True)
                ipnetns.append(name)
                proc = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "600"])
            else:
                proc = subprocess.Popen(["unshare", "-n", "sleep", "600"])
            procs.append(proc)
            cid = (uuid.uuid4().hex * 2)[:64]
            if kind == 0:
                cg(f"system.slice/docker-{cid}.scope", proc.pid)
                d = top / f"var/lib/docker/containers/{cid}"
                d.mkdir(parents=True)
                (d / "config.v2.json").write_text(json.dumps({"Name": f"/web-{i}", "Config": {"Labels": {}}}))
            elif kind == 1:
                uid = str(uuid.uuid4())
                cg(f"kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-{cid}.scope", proc.pid)
                d = top / f"run/containerd/io.containerd.runtime.v2.task/k8s.io/{cid}"
                d.mkdir(parents=True)
                (d / "config.json").write_text(json.dumps({"annotations": {
                    "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "app",
                    "io.kubernetes.cri.sandbox-name": f"pod-{i}", "io.kubernetes.cri.sandbox-namespace": "bench",
                }}))
        deadline = time.monotonic() + 30
        own = os.stat("/proc/self/ns/net").st_ino
        while any(os.stat(f"/proc/{p.pid}/ns/net").st_ino == own for p in procs):
            if time.monotonic() > deadline:
                raise SystemExit("namespaces did not come up")
            time.sleep(0.05)

        roots = StateRoots.under(str(top))
        roots = StateRoots(**{**roots.__dict__, "run_netns": "/run/netns"})
        named = Sampler(all_netns=True, blocking_owners=True)
        named.namer = NetnsNamer(roots)
        plain = Sampler(all_netns=True, blocking_owners=True)
        plain._netns_names = lambda raw: {}  # type: ignore[method-assign]  # the baseline: no naming
        for s in (named, plain):
            s.sample(0.0)
            s.sample(0.0)
        snap = named.sample(0.0)
        ours = {os.stat(f"/proc/{p.pid}/ns/net").st_ino for p in procs}
        got = {ns.inode: (ns.name, ns.name_source) for ns in snap.netns if ns.inode in ours}
        by_source: dict[str, int] = {}
        for _n, src in got.values():
            by_source[str(src)] = by_source.get(str(src), 0) + 1

        refs = discover()
        members = {ino: list(ref.pids) for ino, ref in refs.items()}
        steady = NetnsNamer(roots)
        steady.names(members)
        res: dict[str, list[tuple[float, float]]] = {k: [] for k in ("tick", "tick-nonames", "names-steady", "names-cold")}
        for rep in range(args.reps):
            order = (("tick", named), ("tick-nonames", plain))
            for key, sampler in order if rep % 2 == 0 else order[::-1]:  # alternate: no order bias
                res[key].append(_timed(lambda s=sampler: s.sample(0.0)))
            fresh = {ino: list(p) for ino, p in members.items()}  # as a new discovery hands them over
            res["names-steady"].append(_timed(lambda f=fresh: steady.names(f)))
            res["names-cold"].append(_timed(lambda: NetnsNamer(roots).names(members)))
        named.close()
        plain.close()

        med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in res.items()}
        out = {
            "netns_total": len(members), "netns_made": args.netns, "named_by_source": by_source,
            "reps": args.reps, "median_ms": {k: {"cpu": round(c, 3), "wall": round(w, 3)} for k, (c, w) in med.items()},
            "tick_added_cpu_ms": round(med["tick"][0] - med["tick-nonames"][0], 3),
            "tick_added_cpu_ms_paired": round(statistics.median(
                a[0] - b[0] for a, b in zip(res["tick"], res["tick-nonames"], strict=True)), 3),
            "tick_ratio": round(med["tick"][0] / med["tick-nonames"][0], 3),
            "load": os.getloadavg()[0],
        }
        (ROOT / "bench/results").mkdir(exist_ok=True)
        (ROOT / "bench/results/netns_names.json").write_text(json.dumps(out, indent=1) + "\n")
        print(f"netns on the host: {len(members)} ({args.netns} made here); named by source: {by_source}")
        print("| what | CPU ms (median) | wall ms (median) |")
        print("|---|---:|---:|")
        for k, (c, w) in med.items():
            print(f"| {k} | {c:.3f} | {w:.3f} |")
        print(f"tick with names / without: {out['tick_ratio']}x (+{out['tick_added_cpu_ms']} ms CPU; "
              f"median of per-rep differences {out['tick_added_cpu_ms_paired']} ms)")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        for name in ipnetns:
            subprocess.run(["ip", "netns", "del", name], check=False)
        for path in sorted(cgroups, key=lambda p: -len(p.parts)):
            for _ in range(200):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
