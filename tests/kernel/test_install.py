"""The production install path (docs/EXPORTER.md "Install on a host"): a wheel built from this
tree, installed alone into a fresh venv over Debian's python3-bpfcc / python3-prometheus-client,
run from a directory that is not the repository. No test toolchain in that venv."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, need
from tests.kernel.exporter_helpers import Exporter, one, wait_until


def test_wheel_into_a_fresh_system_site_venv_runs_once_and_serve(root, tmp_path):
    need(Path("/usr/bin/python3").exists(), "needs /usr/bin/python3 (Debian's python3)")
    dist = tmp_path / "dist"
    # The wheel from the source tree, built with the setuptools already here (no download).
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(ROOT)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    wheels = list(dist.glob("tcpq_top-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "opt"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    # Only the wheel and its runtime dependencies (the host's configured index for what Debian lacks).
    inst = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert inst.returncode == 0, inst.stderr
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--local", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    local = {p["name"].lower() for p in json.loads(freeze)}
    assert "tcpq-top" in local and not local & {"pytest", "ruff", "mypy"}, local
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import tcptop_q, prometheus_client; "
                            "print(tcptop_q.__file__); print(prometheus_client.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(venv)), where  # the installed copy, not the source tree
    exe = str(venv / "bin" / "tcpq-top")
    once = subprocess.run([exe, "--once", "--json", "--interval", "0.2"], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    snap = json.loads(once.stdout)
    assert snap["sources"]["netlink"] and snap["listeners"], snap["sources"]
    assert snap["sources"]["bpf"] is True, snap["sources"]["bpf_error"]  # the .bpf.c files are in the wheel
    exp = Exporter("--interval", "0.3", argv=[exe], cwd=tmp_path)
    try:
        s = wait_until(lambda: (lambda s: s if one(s, "tcpq_bpf_up") == 1 else None)(exp.scrape()), 120, "bpf_up 1")
        assert s["tcpq_listener_info"]
        assert re.search(r"\d", str(one(s, "tcpq_listeners")))
    finally:
        assert exp.stop() == 0
