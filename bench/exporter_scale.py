#!/usr/bin/env python3
"""`tcpq-top --serve` at scale: scrape latency (median, p99) and the exporter's RSS at 10k
listeners (ScaleFixture), next to `ss -ltnm` over the same sockets and `--batch`'s RSS, in one run.

Scrapes go over one keep-alive connection with Prometheus 2.42's own Accept and Accept-Encoding
headers, at random moments (0.1-0.4 s apart), so they land both while the exporter samples and
between samples. For each scrape the script reads the CPU time (schedstat) of the exporter's
sampling thread (`tcpq-sample`) and of the connection's thread (`tcpq-http`) before and after:
a scrape is "while sampling" when the sampling thread ran meanwhile, and the HTTP thread's own
CPU per scrape is the figure the machine's load disturbs least. Load average and commit are
recorded. Writes bench/results/exporter_scale.json and prints markdown.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import random
import re
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from rss import status_kb  # noqa: E402
from scale_fixture import tcpq_argv  # noqa: E402

PROM_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def tasks(pid: int, comm: str) -> list[int]:
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{t}/comm").read_text().strip() == comm:
                out.append(int(t))
        except OSError:
            pass
    return out


def cpu_ns(pid: int, tid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except OSError:
        return 0


def exporter_run(netns: int, max_listeners: int, scrapes: int, interval: float) -> dict:
    p = subprocess.Popen([*tcpq_argv(), "--serve", "127.0.0.1:0", "--interval", str(interval), "--netns", str(netns),
                          "--max-listeners", str(max_listeners)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    load = [loadavg()]
    try:
        sel = selectors.DefaultSelector()
        sel.register(p.stderr, selectors.EVENT_READ)
        line = p.stderr.readline() if sel.select(60) else ""
        m = re.search(r"127\.0\.0\.1:(\d+)/metrics", line)
        if not m:
            raise RuntimeError(f"exporter did not start: {line!r}")
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=60)

        def scrape() -> tuple[float, bytes]:
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers=PROM_HEADERS)
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200, r.status
            return time.perf_counter() - t0, body

        deadline = time.monotonic() + 300
        want = min(max_listeners, 1000)
        while time.monotonic() < deadline:  # probes live and the listeners in the export
            _, body = scrape()
            text = gzip.decompress(body)
            if b"tcpq_bpf_up 1.0" in text and text.count(b"tcpq_listener_queued_total{") >= want:
                break
            time.sleep(1.0)
        else:
            raise RuntimeError("probes never went live / listeners never exported")
        del text
        sampler = tasks(p.pid, "tcpq-sample")
        http_t = tasks(p.pid, "tcpq-http")  # the keep-alive connection's thread
        if len(sampler) != 1 or len(http_t) != 1:
            raise RuntimeError(f"threads not found: sample {sampler}, http {http_t}")
        rows, rss = [], []
        for i in range(scrapes):
            time.sleep(random.uniform(0.1, 0.4))
            s0, h0 = cpu_ns(p.pid, sampler[0]), cpu_ns(p.pid, http_t[0])
            dt, body = scrape()
            s1, h1 = cpu_ns(p.pid, sampler[0]), cpu_ns(p.pid, http_t[0])
            rows.append((dt, (s1 - s0) / 1e6, (h1 - h0) / 1e6, len(body)))
            if i >= scrapes // 2:
                rss.append(status_kb(p.pid).get("VmRSS", 0) / 1024)
            if i % 50 == 0:
                load.append(loadavg())
        final = gzip.decompress(body)
        dur = re.search(rb"tcpq_sample_duration_seconds ([0-9.e+-]+)", final)
        conn.close()
    finally:
        p.terminate()
        p.wait(timeout=30)
    load.append(loadavg())
    lat = [r[0] * 1e3 for r in rows]
    busy = [r[0] * 1e3 for r in rows if r[1] > 0.5]  # the sampling thread ran > 0.5 ms meanwhile
    idle = [r[0] * 1e3 for r in rows if r[1] <= 0.5]
    return {"median_ms": med(lat), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": max(lat),
            "while_sampling": {"n": len(busy), "median_ms": med(busy), "p99_ms": pct(busy, 99)},
            "between_samples": {"n": len(idle), "median_ms": med(idle), "p99_ms": pct(idle, 99)},
            "http_cpu_ms_median": med([r[2] for r in rows]), "http_cpu_ms_p99": pct([r[2] for r in rows], 99),
            "rss_mb": med(rss), "gzip_bytes": rows[-1][3], "plain_bytes": len(final),
            "samples": final.count(b"\ntcpq_"), "scrapes": scrapes,
            "sample_duration_s": float(dur.group(1)) if dur else None,
            "load": [min(load), med(load), max(load)], "ms": [round(x, 1) for x in lat],
            # the 5 slowest: (latency ms, sampling thread CPU ms, HTTP thread CPU ms) during each
            "slowest": sorted(((round(r[0] * 1e3, 1), round(r[1], 1), round(r[2], 2)) for r in rows), reverse=True)[:5]}


def steady_rss(argv: list[str], warm: float, span: float) -> float:
    """Median VmRSS of a running process between `warm` and `warm + span` seconds after its
    start, read every 0.5 s; the process is then stopped. (bench/rss.py's run_tcpq keeps the
    last reading before exit, which can fall in the teardown, after the probes were freed.)"""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    readings = []
    try:
        while time.monotonic() - t0 < warm + span:
            if p.poll() is not None:
                raise RuntimeError(f"{argv} exited with {p.returncode}")
            if time.monotonic() - t0 >= warm:
                readings.append(status_kb(p.pid).get("VmRSS", 0) / 1024)
            time.sleep(0.5)
    finally:
        p.terminate()  # our own child, by pid
        p.wait(timeout=30)
    return med(readings)


def ss_run(fx, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fx.exec(["ss", "-ltnm"])
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--sockets", type=int, default=0)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--batch-warm", type=float, default=40.0, help="s before --batch's RSS is read (probes live)")
    ap.add_argument("--caps", default="2000,10000", help="--max-listeners values, comma-separated")
    args = ap.parse_args()
    from scale_fixture import ScaleFixture, install_signal_cleanup, machine, results_dir

    install_signal_cleanup()
    out: dict = {"machine": machine(), "commit": commit(), "listeners": args.listeners, "sockets": args.sockets}
    with ScaleFixture(args.listeners, args.sockets) as fx:
        ss = ss_run(fx, 10)
        for cap in [int(c) for c in args.caps.split(",")]:
            out[f"--serve --max-listeners {cap}"] = exporter_run(fx.inode, cap, args.scrapes, args.interval)
            ss += ss_run(fx, 10)
        load0 = loadavg()
        rss = steady_rss([*tcpq_argv(), "--batch", "-n", "100000", "-d", str(args.interval), "--netns", str(fx.inode)],
                         args.batch_warm, 30)
        out["--batch (BPF) steady RSS MB"] = rss
        out["--batch load"] = [load0, loadavg()]
    out["ss -ltnm"] = {"median_ms": med(ss), "p99_ms": pct(ss, 99), "runs": len(ss)}
    ssm = out["ss -ltnm"]["median_ms"]
    print(f"{args.listeners} listeners, {args.sockets} sockets, commit {out['commit']}; ss -ltnm {ssm:.0f} ms median,"
          f" {out['ss -ltnm']['p99_ms']:.0f} ms p99 ({len(ss)} runs); --batch steady RSS {rss:.0f} MB (median while running)")
    print("| exporter | samples | scrape median ms (/ ss) | p90 | p99 (/ ss p99) | while sampling: n, median, p99 | "
          "between: n, median, p99 | HTTP thread CPU ms median, p99 | RSS MB | RSS - batch | sample s | load min/med/max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, v in out.items():
        if k.startswith("--serve"):
            w, b = v["while_sampling"], v["between_samples"]
            print(f"| {k} | {v['samples']} | {v['median_ms']:.1f} ({v['median_ms'] / ssm:.2f}x) | {v['p90_ms']:.0f} | "
                  f"{v['p99_ms']:.0f} ({v['p99_ms'] / out['ss -ltnm']['p99_ms']:.2f}x) | "
                  f"{w['n']}, {w['median_ms']:.1f}, {w['p99_ms']:.0f} | {b['n']}, {b['median_ms']:.1f}, {b['p99_ms']:.0f} | "
                  f"{v['http_cpu_ms_median']:.2f}, {v['http_cpu_ms_p99']:.2f} | {v['rss_mb']:.0f} | {v['rss_mb'] - rss:+.0f} | "
                  f"{v['sample_duration_s'] or 0:.2f} | {'/'.join(f'{x:.1f}' for x in v['load'])} |")
    (results_dir() / "exporter_scale.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
