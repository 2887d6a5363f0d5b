"""With capabilities dropped (capsh), each feature degrades to the promised view with its reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, need


def once_with_caps_dropped(drop: str, *args: str) -> dict:
    need(shutil.which("capsh") is not None, "needs capsh (libcap2-bin)")
    cmd = f"exec {sys.executable} -m tcptop_q --once --json --interval 0.2 " + " ".join(args)
    proc = subprocess.run(["capsh", f"--drop={drop}", "--", "-c", cmd], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout)


def test_without_cap_sys_admin_other_netns_are_named_not_read(labns):
    labns.serve(addr="127.0.0.1", port=8093, backlog=3)
    snap = once_with_caps_dropped("cap_sys_admin", "--no-bpf")
    assert labns.inode not in {n["inode"] for n in snap["netns"]}
    assert not [lst for lst in snap["listeners"] if lst["lport"] == 8093]
    assert any("CAP_SYS_ADMIN" in note for note in snap["sources"]["notes"])
    assert len(snap["netns"]) == 1  # its own netns is still read in full


def test_without_cap_bpf_and_perfmon_bpf_is_off_with_the_reason(labns):
    snap = once_with_caps_dropped("cap_sys_admin,cap_bpf,cap_perfmon")
    assert snap["sources"]["bpf"] is False
    assert "CAP_BPF" in snap["sources"]["bpf_error"] and "\n" not in snap["sources"]["bpf_error"]
    assert snap["listeners"] is not None
    assert all(lst["overflows"] is None and lst["accepts"] is None for lst in snap["listeners"])


@pytest.mark.parametrize("drop", ["cap_sys_admin", "cap_sys_ptrace,cap_dac_override,cap_dac_read_search"])
def test_bpf_needs_only_cap_bpf_and_perfmon(root, drop):
    snap = once_with_caps_dropped(drop)
    assert snap["sources"]["bpf"] is True, snap["sources"]["bpf_error"]


def test_without_cap_sys_ptrace_other_users_sockets_have_no_owner(labns):
    """A server run by nobody: root without CAP_SYS_PTRACE cannot read its /proc/PID/fd."""
    code = "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',8094)); s.listen(2); print('ready',flush=True); time.sleep(60)"
    proc = labns.spawn(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c", code],
                       stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    full = json.loads(subprocess.run([sys.executable, "-m", "tcptop_q", "--once", "--json", "--no-bpf", "--interval", "0.1",
                                      "--netns", str(labns.inode)], capture_output=True, text=True, cwd=ROOT).stdout)
    assert [lst["pid"] for lst in full["listeners"] if lst["lport"] == 8094] == [proc.pid]
    snap = once_with_caps_dropped("cap_sys_ptrace,cap_dac_override,cap_dac_read_search", "--no-bpf", "--netns", str(labns.inode))
    assert [lst["pid"] for lst in snap["listeners"] if lst["lport"] == 8094] == [None]
    assert any("CAP_SYS_PTRACE" in note for note in snap["sources"]["notes"])
