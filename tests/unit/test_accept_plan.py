"""Which accept() hook the plan picks, from kprobes + kallsyms + the syscall format files
(no root: BTF is world-readable), and what it says about what cannot be seen."""

from __future__ import annotations

import pytest

from tcptop_q.probes import tracefs
from tcptop_q.probes.plan import IO_URING_NOTE, KRETPROBE_BLOCKED_NOTE, build_plan
from tests.test_bpf_units import _fake_formats

needs_btf = pytest.mark.usefixtures("btf_required")
EXIT = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n"


def _formats(**override):
    base = _fake_formats()
    base["sys_exit_accept4"] = tracefs.parse_format("syscalls", "sys_exit_accept4", EXIT)
    base["sys_exit_accept"] = tracefs.parse_format("syscalls", "sys_exit_accept", EXIT)
    base.update(override)
    return base


@needs_btf
def test_syscall_path_without_kprobes_names_io_uring() -> None:
    plan = build_plan(formats=_formats(), kprobes=False, tracepoints="classic")
    hook = "tracepoint:syscalls:sys_exit_accept4+tracepoint:syscalls:sys_exit_accept"
    assert plan.hooks["accepted"] == plan.hooks["accept_wait"] == hook
    assert plan.hooks["handshake"] == plan.hooks["queued"] == "tracepoint:sock:sk_data_ready"
    assert ("tracepoint", "syscalls:sys_exit_accept4", "tq_accept_exit") in plan.attach
    assert IO_URING_NOTE in plan.notes and "io_uring" in IO_URING_NOTE
    assert KRETPROBE_BLOCKED_NOTE not in plan.notes
    assert "-DTQ_HAVE_ACCEPT_SYSCALL" in plan.cflags and "struct tq_tp_sys_exit_accept {" in plan.body


@needs_btf
def test_kretprobe_where_kprobes_exist_and_no_io_uring_note() -> None:
    plan = build_plan(formats=_formats(), kprobes=True, kallsyms=frozenset({"inet_csk_accept"}), blacklist=frozenset())
    assert plan.hooks["accepted"] == "kretprobe:inet_csk_accept"
    assert ("kretprobe", "inet_csk_accept", "tq_krp_csk_accept") in plan.attach
    assert not any(a[0] == "tracepoint" and a[1].startswith("syscalls:") for a in plan.attach)
    assert IO_URING_NOTE not in plan.notes
    assert KRETPROBE_BLOCKED_NOTE in plan.notes  # accept() calls already blocked at attach are named
    forced = build_plan(formats=_formats(), kprobes=True, kallsyms=frozenset({"inet_csk_accept"}),
                        blacklist=frozenset(), accept_hook="syscall")
    assert forced.hooks["accepted"].startswith("tracepoint:syscalls:")


@needs_btf
def test_nothing_to_link_on_means_unknown_not_zero() -> None:
    none = build_plan(formats=_formats(sk_data_ready=None), kprobes=False)
    for metric in ("queued", "accepted", "accept_wait", "handshake"):
        assert metric not in none.hooks
    assert any("accepted/accept_wait/handshake unknown" in n for n in none.notes)
    no_sys = build_plan(formats=_formats(sys_exit_accept4=None, sys_exit_accept=None), kprobes=False)
    assert "accepted" not in no_sys.hooks and "handshake" in no_sys.hooks
    blocked = build_plan(formats=_formats(), kprobes=True, kallsyms=frozenset({"inet_csk_accept"}),
                         blacklist=frozenset({"inet_csk_accept"}))
    assert blocked.hooks["accepted"].startswith("tracepoint:syscalls:")
