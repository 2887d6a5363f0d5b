"""Compile and attach a Plan with bcc. No state of its own: BpfProbes (probes/bpf.py)
calls these from its loader thread and keeps what they return.

BCC_KERNEL_SOURCE (the header tree bcc compiles against, probes/kheaders.py) is
process-global: kernel_source_env() sets it once, on the thread that starts the
probes, before the loader thread exists; nothing here writes os.environ.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from .plan import Plan, ProbeError, one_line
from .plan import raw_hooks as _raw_hooks
from .plan import serves as _serves

# clang/LLVM inside bcc is not known to be safe from two threads at once (two probes instances
# loading together; it crashed once when a tcp iterator compiled beside another instance's plan):
# every bcc compile of this process takes this lock.
COMPILE_LOCK = threading.Lock()


def _cap_eff() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def preflight() -> None:
    """Raise ProbeError with the first reason the probes cannot load."""
    caps = _cap_eff()
    cap_sys_admin, cap_perfmon, cap_bpf = 1 << 21, 1 << 38, 1 << 39
    if not (caps & cap_sys_admin or (caps & cap_bpf and caps & cap_perfmon)):
        raise ProbeError(f"needs root (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN); running as uid {os.geteuid()}")
    try:
        lockdown = Path("/sys/kernel/security/lockdown").read_text()
        if "[confidentiality]" in lockdown:
            raise ProbeError("kernel lockdown=confidentiality forbids reading kernel memory from BPF")
    except OSError:
        pass
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise ProbeError("no BTF at /sys/kernel/btf/vmlinux (kernel built without CONFIG_DEBUG_INFO_BTF)")


def kernel_source_env() -> str | None:
    """Point bcc at a header tree (once, from the starting thread); a reason if there is none."""
    from .kheaders import find_kernel_source

    try:
        ksrc, _desc = find_kernel_source()
    except OSError as exc:
        return str(exc)
    if ksrc and os.environ.get("BCC_KERNEL_SOURCE") != ksrc:
        os.environ["BCC_KERNEL_SOURCE"] = ksrc
    return None


def _release_compiler_heap() -> None:
    """clang/LLVM free tens of MB once the program is built, but glibc keeps the pages:
    hand them back to the kernel (RSS is what an SRE sees in top)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def import_bcc():
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError:
        raise ProbeError("bcc is not installed (apt install python3-bpfcc; use a venv with --system-site-packages)") from None
    return bcc


def compile_plan(bcc, plan: Plan):
    """The loaded bcc.BPF object (programs verified, nothing attached)."""
    if not plan.attach:
        raise ProbeError("no usable tracepoint on this kernel")
    try:
        with COMPILE_LOCK:
            b = bcc.BPF(text=plan.body, cflags=plan.cflags)
    except Exception as exc:  # bcc raises bare Exception for compile/load errors
        raise ProbeError(f"BPF compile failed: {one_line(exc)}") from None
    _release_compiler_heap()
    return b


def _attach_one(b, kind: str, target: str, fn: str) -> None:
    if kind == "tracepoint":
        b.attach_tracepoint(tp=target.encode(), fn_name=fn.encode())
    elif kind == "raw_tracepoint":  # bcc names a raw tracepoint by its event alone
        b.attach_raw_tracepoint(tp=target.partition(":")[2].encode(), fn_name=fn.encode())
    elif kind == "kretprobe":
        b.attach_kretprobe(event=target.encode(), fn_name=fn.encode())
    else:
        b.attach_kprobe(event=target.encode(), fn_name=fn.encode())


def detach_one(b, kind: str, target: str) -> None:
    if kind == "raw_tracepoint":
        b.detach_raw_tracepoint(tp=target.partition(":")[2].encode())
    else:
        b.detach_tracepoint(tp=target.encode())


def attach_all(b, plan: Plan) -> tuple[dict[str, str], list[str]]:
    """Attach every planned hook: (metric -> hook for those attached, notes on failures).

    A raw tracepoint the kernel refuses (no BPF_PROG_TYPE_RAW_TRACEPOINT, the verifier, the
    attach) is replaced by its classic tracepoint program, which was compiled with it; the
    hooks and plan.attach then say "tracepoint:" for it (what `--ebpf` and sources.hooks show)."""
    hooks = dict(plan.hooks)
    notes: list[str] = []
    attached = 0
    done: list[tuple[str, str, str]] = []
    for kind, target, fn in plan.attach:
        try:
            _attach_one(b, kind, target, fn)
            attached += 1
            done.append((kind, target, fn))
            continue
        except Exception as exc:
            fallback = plan.fallbacks.get(fn) if kind == "raw_tracepoint" else None
            if fallback is not None:
                try:
                    _attach_one(b, *fallback)
                    attached += 1
                    done.append(fallback)
                    hooks = _raw_hooks(hooks, [target], kind="tracepoint")
                    notes.append(f"raw tracepoint {target} refused ({one_line(exc)}): classic tracepoint")
                    continue
                except Exception as exc2:
                    exc = exc2
            for metric in [m for m, h in hooks.items() if _serves(h, kind, target) or _serves(h, "tracepoint", target)]:
                del hooks[metric]
            notes.append(f"attach {kind}:{target} failed: {one_line(exc)}")
    if not attached:
        raise ProbeError(notes[-1] if notes else "nothing attached")
    plan.attach[:] = done
    return hooks, notes


def prog_ids(b) -> list[int]:
    """Kernel ids of the programs `b` loaded (from /proc/self/fdinfo)."""
    ids: list[int] = []
    funcs: list = list(getattr(b, "funcs", {}).values()) if b is not None else []
    for fn in funcs:
        try:
            for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.append(int(line.split()[1]))
        except OSError:
            pass
    return sorted(ids)
