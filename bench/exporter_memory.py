#!/usr/bin/env python3
"""Where the exporter's memory goes: one process samples a ScaleFixture (10k listeners) as
`--batch` does (phase "batch": LiveSource.sample() every --interval, nothing else), then runs
the exporter's own threads over the same source (phase "serve": Exporter + Sampling + the HTTP
server, scraped like Prometheus does). RSS (/proc/self/smaps_rollup, heap vs anonymous) and
tracemalloc's live Python allocations at the end of each phase; the serve - batch difference
by allocation site. No BPF by default (--bpf to load the probes): the difference is the
exporter's, the probes cost the same in both phases. Prints markdown, writes
bench/results/exporter_memory.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
               "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def rollup() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    heap = 0
    with open("/proc/self/smaps") as f:
        current = ""
        for line in f:
            if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                current = parts[5] if len(parts) >= 6 else ""
            elif line.startswith("Rss:") and current == "[heap]":
                heap += int(line.split()[1])
    out["heap"] = heap
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listeners", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="per phase")
    ap.add_argument("--max-listeners", type=int, default=2000)
    ap.add_argument("--bpf", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--no-trace", action="store_true", help="RSS only (tracemalloc's own memory is RSS too)")
    args = ap.parse_args()
    from scale_fixture import ScaleFixture, install_signal_cleanup, machine, results_dir

    install_signal_cleanup()
    from tcptop_q.export.server import tune_for_serving

    tune_for_serving()  # as `--serve` does before its threads start (one malloc arena)
    if not args.no_trace:
        tracemalloc.start(8)
    from tcptop_q.source import Filters, LiveSource

    out: dict = {"machine": machine(), "listeners": args.listeners, "max_listeners": args.max_listeners, "bpf": args.bpf}
    with ScaleFixture(args.listeners, 0) as fx:
        source = LiveSource(interval=args.interval, filters=Filters(netns=fx.inode), use_bpf=args.bpf,
                            blocking_owners=False, feed=True, keep_connections=False)
        try:
            if args.bpf:
                source.start_bpf()
            # phase 1: what --batch holds
            snap = source.sample(children=True)
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                time.sleep(args.interval)
                snap = source.sample()
            del snap
            import gc

            gc.collect()
            out["batch"] = rollup()
            t_batch = tracemalloc.take_snapshot() if not args.no_trace else None if not args.no_trace else None
            # phase 2: the exporter's threads over the same source
            before_import = rollup()["Rss"]
            from tcptop_q.export.server import Exporter, Sampling, _Server  # noqa: F811
            from tcptop_q.export.webconfig import WebConfig

            out["import_kb"] = rollup()["Rss"] - before_import
            exporter = Exporter(args.max_listeners)
            server = _Server(("127.0.0.1", 0), exporter, WebConfig())
            sampling = Sampling(source, exporter, args.interval, lambda line: print(line, file=sys.stderr))
            sampling._first_done = True  # type: ignore[attr-defined]
            http = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
            sampling.start()
            http.start()
            url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
            end = time.monotonic() + args.seconds
            sizes = []
            while time.monotonic() < end:
                for accept, gz in ((PROM_ACCEPT, True), ("", False)):
                    req = urllib.request.Request(url, headers={"Accept": accept, **({"Accept-Encoding": "gzip"} if gz else {})})
                    with urllib.request.urlopen(req, timeout=30) as r:
                        body = r.read()
                    sizes.append(len(gzip.decompress(body)) if gz else len(body))
                time.sleep(args.interval * 0.7)
            out["body_bytes"] = max(sizes)
            gc.collect()
            out["serve"] = rollup()
            t_serve = tracemalloc.take_snapshot() if not args.no_trace else None
            sampling.stop.set()
            server.shutdown()
            server.server_close()
            sampling.join(10)
        finally:
            source.close()
    diff = t_serve.compare_to(t_batch, "lineno") if t_serve and t_batch else []
    out["tracemalloc_diff_kb"] = sum(d.size_diff for d in diff) // 1024
    out["tracemalloc_batch_kb"] = sum(s.size for s in t_batch.statistics("filename")) // 1024 if t_batch else 0
    out["tracemalloc_serve_kb"] = sum(s.size for s in t_serve.statistics("filename")) // 1024 if t_serve else 0
    top = []
    for d in diff[: args.top]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in d.traceback][:4]
        top.append({"kb": d.size_diff // 1024, "count": d.count_diff, "where": " < ".join(frames)})
    out["top"] = top
    b, s = out["batch"], out["serve"]
    print(f"{args.listeners} listeners, --max-listeners {args.max_listeners}, bpf {args.bpf}; body {out['body_bytes']} B")
    print("| phase | Rss MB | Anonymous MB | [heap] MB | Python live (tracemalloc) MB |")
    print("|---|---:|---:|---:|---:|")
    print(f"| batch | {b['Rss'] / 1024:.1f} | {b['Anonymous'] / 1024:.1f} | {b['heap'] / 1024:.1f} | {out['tracemalloc_batch_kb'] / 1024:.1f} |")
    print(f"| serve | {s['Rss'] / 1024:.1f} | {s['Anonymous'] / 1024:.1f} | {s['heap'] / 1024:.1f} | {out['tracemalloc_serve_kb'] / 1024:.1f} |")
    print(f"| serve - batch | {(s['Rss'] - b['Rss']) / 1024:+.1f} | {(s['Anonymous'] - b['Anonymous']) / 1024:+.1f} | "
          f"{(s['heap'] - b['heap']) / 1024:+.1f} | {out['tracemalloc_diff_kb'] / 1024:+.1f} |")
    print(f"imports of the exporter: {out['import_kb'] / 1024:.1f} MB")
    for t in top:
        print(f"  {t['kb']:+7d} kB {t['count']:+7d}  {t['where']}")
    (results_dir() / "exporter_memory.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
