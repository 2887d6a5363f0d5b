"""Shared fixtures. Kernel tests need root: they fail (never skip) when CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip locally with a reason; in CI a missing prerequisite is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def btf_required() -> None:
    need(Path("/sys/kernel/btf/vmlinux").exists(), "kernel has no BTF at /sys/kernel/btf/vmlinux")


@pytest.fixture
def bpf(root) -> None:
    """Root, bpftool and bcc: what every test that loads our probes needs."""
    need(shutil.which("bpftool") is not None, "needs bpftool")
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "needs bcc (python3-bpfcc) in this interpreter")


@pytest.fixture
def root() -> None:
    need(os.geteuid() == 0, "needs root (network namespaces, sock_diag in other netns)")
    need(shutil.which("ip") is not None, "needs iproute2 (ip, ss, nstat)")


@pytest.fixture
def labns(root):
    from tcptop_q.lab.netns import LabNetns

    ns = LabNetns("test")
    try:
        yield ns
    finally:
        ns.close()
    assert not Path(f"/run/netns/{ns.name}").exists()


def tcpq(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real command line, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "tcptop_q", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )
