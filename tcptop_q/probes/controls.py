"""What user space writes into the running programs: the tq_ctl slots (probes/layout.py),
and which attached hooks may be detached for a view that never shows their metrics."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping

from . import layout
from .plan import serves


def set_ctl(b, slot: int, value: int) -> None:
    """Write one tq_ctl slot of the loaded program `b` (a bcc.BPF); no-op when not loaded."""
    if b is None:
        return
    if not 0 <= slot < layout.CTL_SLOTS:
        raise ValueError(f"tq_ctl has no slot {slot}")
    b[b"tq_ctl"][ctypes.c_int(slot)] = ctypes.c_ulonglong(value)


def feed_slots(mode: str, port: int | None) -> list[tuple[int, int]]:
    """The slot writes, in order, that put the feed in `mode` ("off" | "all" | "port")."""
    if mode == "off":
        return [(layout.CTL_FEED_MODE, layout.FEED_OFF)]
    if mode == "port" and port is not None:
        return [(layout.CTL_FEED_PORT, int(port)), (layout.CTL_FEED_MODE, layout.FEED_PORT)]
    return [(layout.CTL_FEED_MODE, layout.FEED_ALL)]


def children_slot(enabled: bool) -> tuple[int, int]:
    return layout.CTL_CHILDREN_OFF, 0 if enabled else 1


def detachable(attach: Iterable[tuple[str, str, str]], hooks: Mapping[str, str],
               metrics: set[str]) -> list[tuple[str, str]]:
    """(kind, target) of the attached tracepoints that serve only `metrics`."""
    out = []
    for kind, target, _fn in attach:
        served = {m for m, h in hooks.items() if serves(h, kind, target)}
        if kind in ("tracepoint", "raw_tracepoint") and served and served <= metrics:
            out.append((kind, target))
    return out


def without_hook(hooks: Mapping[str, str], kind: str, target: str) -> dict[str, str]:
    """hooks minus every metric that hook kind:target serves."""
    return {m: h for m, h in hooks.items() if not serves(h, kind, target)}
