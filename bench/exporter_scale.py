#!/usr/bin/env python3
"""`tcpq-top --serve` at scale: scrape latency (median, p99) and the exporter's RSS at 10k
listeners (ScaleFixture), next to `ss -ltnm` over the same sockets and `--batch`'s RSS, in one run.

Scrapes are spaced more than one --interval apart, so each renders a new snapshot (as a
Prometheus scraping every 15 s always does); a second scrape right after shows the cached
rendering. Requests carry Prometheus 2.42's own Accept and Accept-Encoding headers.
Writes bench/results/exporter_scale.json and prints markdown.
"""

from __future__ import annotations

import argparse
import json
import re
import selectors
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from rss import run_tcpq, status_kb  # noqa: E402
from scale_fixture import tcpq_argv  # noqa: E402

PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
               "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def scrape(url: str) -> tuple[float, int, bytes]:
    req = urllib.request.Request(url, headers={"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return time.perf_counter() - t0, r.status, body


def exporter_run(netns: int, max_listeners: int, scrapes: int, interval: float) -> dict:
    p = subprocess.Popen([*tcpq_argv(), "--serve", "127.0.0.1:0", "--interval", str(interval), "--netns", str(netns),
                          "--max-listeners", str(max_listeners)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        sel = selectors.DefaultSelector()
        sel.register(p.stderr, selectors.EVENT_READ)
        line = p.stderr.readline() if sel.select(60) else ""
        m = re.search(r"127\.0\.0\.1:(\d+)/metrics", line)
        if not m:
            raise RuntimeError(f"exporter did not start: {line!r}")
        url = f"http://127.0.0.1:{m.group(1)}/metrics"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # probes live and the listeners in the export
            import gzip

            _, _, body = scrape(url)
            text = gzip.decompress(body).decode()
            if "tcpq_bpf_up 1.0" in text and text.count("tcpq_listener_info{") >= min(max_listeners, 1000):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("probes never went live")
        cold, cached, size = [], [], 0
        for _ in range(scrapes):
            time.sleep(interval * 1.1)
            dt, code, body = scrape(url)
            assert code == 200
            cold.append(dt)
            size = len(body)
            cached.append(scrape(url)[0])
        rss = status_kb(p.pid).get("VmRSS", 0) / 1024
        samples = gzip.decompress(scrape(url)[2]).decode().count("\ntcpq_")
    finally:
        p.terminate()
        p.wait(timeout=30)
    return {"cold_median_ms": statistics.median(cold) * 1e3, "cold_p99_ms": pct(cold, 99) * 1e3,
            "cached_median_ms": statistics.median(cached) * 1e3, "cached_p99_ms": pct(cached, 99) * 1e3,
            "rss_mb": rss, "gzip_bytes": size, "samples": samples, "scrapes": scrapes,
            "cold_ms": [round(x * 1e3, 1) for x in cold]}


def ss_run(fx, reps: int) -> dict:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fx.exec(["ss", "-ltnm"])
        times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1e3, "p99_ms": pct(times, 99) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--sockets", type=int, default=0)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    from scale_fixture import ScaleFixture, install_signal_cleanup, machine, results_dir

    install_signal_cleanup()
    out: dict = {"machine": machine(), "listeners": args.listeners, "sockets": args.sockets}
    with ScaleFixture(args.listeners, args.sockets) as fx:
        out["ss -ltnm"] = ss_run(fx, 20)
        for cap in (2000, args.listeners):
            out[f"--serve --max-listeners {cap}"] = exporter_run(fx.inode, cap, args.scrapes, args.interval)
        rss, _ = run_tcpq([*tcpq_argv(), "--batch", "-n", "30", "-d", str(args.interval), "--netns", str(fx.inode)], 300)
        out["--batch (BPF) steady RSS MB"] = rss
    print(f"{args.listeners} listeners, {args.sockets} sockets; ss -ltnm {out['ss -ltnm']['median_ms']:.0f} ms median,"
          f" {out['ss -ltnm']['p99_ms']:.0f} ms p99; --batch steady RSS {rss:.0f} MB")
    print("| exporter | samples | scrape median ms | p99 ms | cached median ms | RSS MB | RSS - batch MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, v in out.items():
        if k.startswith("--serve"):
            print(f"| {k} | {v['samples']} | {v['cold_median_ms']:.0f} | {v['cold_p99_ms']:.0f} | "
                  f"{v['cached_median_ms']:.1f} | {v['rss_mb']:.0f} | {v['rss_mb'] - rss:+.0f} |")
    (results_dir() / "exporter_scale.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
