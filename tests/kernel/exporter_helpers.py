"""A running `tcpq-top --serve`, a real Prometheus server, and `ss` parsing for the exporter tests."""

from __future__ import annotations

import json
import re
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, need
from tests.kernel.test_bpf_cli import prog_ids_of  # noqa: F401  (re-exported for test_exporter)


def wait_until(pred, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last={last!r}")


class Exporter:
    """`tcpq-top --serve 127.0.0.1:0 ...`; the bound port is read from its start-up line."""

    def __init__(self, *args: str, argv: list[str] | None = None, env: dict | None = None, cwd=ROOT) -> None:
        cmd = argv or [sys.executable, "-m", "tcptop_q"]
        self.proc = subprocess.Popen([*cmd, "--serve", "127.0.0.1:0", *args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
        assert self.proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        line = self.proc.stderr.readline() if sel.select(60) else ""
        m = re.search(r"serving (https?)://127\.0\.0\.1:(\d+)/metrics", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"exporter did not start: {line!r} {self.proc.stderr.read()}")
        self.scheme, self.port = m.group(1), int(m.group(2))
        self.url = f"{self.scheme}://127.0.0.1:{self.port}/metrics"

    def get(self, path: str = "/metrics", headers: dict | None = None, context=None) -> tuple[int, bytes, dict]:
        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10, context=context) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def scrape(self) -> dict[str, list]:
        """name -> [(labels, value)] for every sample (suffixed names: _total, _bucket, ...)."""
        code, body, _ = self.get()
        assert code == 200, code
        return parse(body.decode())

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, sig: int = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def parse(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(samples: dict, name: str, **labels) -> float | None:
    got = [v for lab, v in samples.get(name, []) if all(lab.get(k) == str(v2) for k, v2 in labels.items())]
    assert len(got) <= 1, (name, labels, got)
    return got[0] if got else None


def ss_listener(ns, port: int) -> dict[str, int]:
    """Recv-Q, Send-Q and skmem d of one listener, as ss prints them inside the netns."""
    out = ns.run(["ss", "-ltnmH", f"sport = :{port}"]).stdout
    m = re.search(r"LISTEN\s+(\d+)\s+(\d+)\s+\S+\s+\S+.*?skmem:\(([^)]*)\)", out, re.S)
    assert m, out
    skmem = dict(re.findall(r"([a-z_]+)(\d+)", m.group(3)))
    return {"recv_q": int(m.group(1)), "send_q": int(m.group(2)), "drops": int(skmem["d"])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """/usr/bin/prometheus on a free loopback port, its own config and storage, stopped by pid."""

    def __init__(self, scrape: dict, interval: str = "1s") -> None:
        need(shutil.which("prometheus") is not None, "needs prometheus (Debian package prometheus)")
        self.dir = Path(tempfile.mkdtemp(prefix="tq-prom-"))
        self.port = free_port()
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                  "scrape_configs": [{"job_name": "tcpq", "scrape_timeout": interval, **scrape}]}
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(self.dir / "log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir,
        )
        try:
            wait_until(self._ready, 60, "prometheus /-/ready")
        except BaseException:
            self.close()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(self.dir / 'log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[tuple[dict, float]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            data = json.loads(r.read())
        assert data["status"] == "success", data
        return [(res["metric"], float(res["value"][1])) for res in data["data"]["result"]]

    def value(self, expr: str) -> float | None:
        res = self.query(expr)
        assert len(res) <= 1, res
        return res[0][1] if res else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def loaded_programs() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out or "[]")}
