"""Layouts shared by the BPF programs and the Python side, defined once, here.

The C text (struct tq_event, the tq_ctl slot numbers, event kinds, histogram
geometry) is generated from these tables and prepended to the program by
probes/plan.py, with a `_Static_assert` on the struct size; the Python struct
used to decode the feed is built from the same table and checked against the
same size at import. Change a field here and both sides change together.
"""

from __future__ import annotations

import struct

# ---- tq_ctl slots, written by user space (probes/controls.py), read by the programs.
CTL_FEED_MODE = 0  # 0 off, 1 every transition, 2 only CTL_FEED_PORT
CTL_FEED_PORT = 1
CTL_EPOCH = 2  # peak_accept_queue interval, bumped on every read
CTL_CHILDREN_OFF = 3  # 1: no per-port child state counts (a view that only dumps)
CTL_FEED_GEN = 4  # bumped at every feed change: state-entry times from before it are unknown
CTL_SLOTS = 5

FEED_OFF, FEED_ALL, FEED_PORT = 0, 1, 2

# ---- feed event kinds
EV_STATE = 0  # sock:inet_sock_set_state
EV_ACCEPT = 1  # accept() returned this child: pid, fd (or NO_FD), ns_in_old = time in the accept queue

NO_FD = 0xFFFFFFFF  # the kretprobe path sees the socket, not the descriptor
NO_TIME = (1 << 64) - 1

# ---- struct tq_event: (name, C type, struct format, array length or 0)
EVENT_FIELDS: tuple[tuple[str, str, str, int], ...] = (
    ("ts_ns", "u64", "Q", 0),  # CLOCK_MONOTONIC (bpf_ktime_get_ns)
    ("skaddr", "u64", "Q", 0),
    ("ns_in_old", "u64", "Q", 0),  # NO_TIME when the previous change was not seen
    ("netns", "u32", "I", 0),
    ("pid", "u32", "I", 0),
    ("fd", "u32", "I", 0),  # EV_ACCEPT only
    ("family", "u16", "H", 0),
    ("sport", "u16", "H", 0),
    ("dport", "u16", "H", 0),
    ("oldstate", "u8", "B", 0),
    ("newstate", "u8", "B", 0),
    ("kind", "u8", "B", 0),
    ("_pad", "u8", "3s", 3),
    ("saddr", "u8", "16s", 16),
    ("daddr", "u8", "16s", 16),
    ("comm", "char", "16s", 16),
)
EVENT = struct.Struct("<" + "".join(fmt for _n, _c, fmt, _a in EVENT_FIELDS))
EVENT_SIZE = 96
assert EVENT.size == EVENT_SIZE, f"tq_event is {EVENT.size} bytes, expected {EVENT_SIZE}"
EVENT_NAMES = tuple(name for name, _c, _f, _a in EVENT_FIELDS)

# ---- latency histograms: log2 octaves of microseconds, 2**HIST_SUB_BITS linear
# sub-buckets per octave (docs/ACCEPT.md: width 1/16 of the octave, so a quantile
# reported inside its bucket is within 6.25 % of the true value, 3.2 % at the midpoint).
HIST_SUB_BITS = 4
HIST_SUB = 1 << HIST_SUB_BITS
HIST_OCTAVES = 36  # up to 2**36 us (19 h); longer waits land in the last bucket
HIST_BUCKETS = (HIST_OCTAVES - HIST_SUB_BITS + 1) * HIST_SUB
HIST_WAIT = 0  # accept wait: queued -> accept()
HIST_HANDSHAKE = 1  # first SYN-ACK sent -> child queued


def c_header() -> str:
    """The C definitions of everything above."""
    out = ["// ---- shared with Python: generated from probes/layout.py"]
    for name, value in (
        ("TQ_CTL_FEED_MODE", CTL_FEED_MODE), ("TQ_CTL_FEED_PORT", CTL_FEED_PORT),
        ("TQ_CTL_EPOCH", CTL_EPOCH), ("TQ_CTL_CHILDREN_OFF", CTL_CHILDREN_OFF), ("TQ_CTL_FEED_GEN", CTL_FEED_GEN),
        ("TQ_CTL_SLOTS", CTL_SLOTS),
        ("TQ_EV_STATE", EV_STATE), ("TQ_EV_ACCEPT", EV_ACCEPT), ("TQ_NO_FD", f"{NO_FD:#x}U"),
        ("TQ_HIST_SUB_BITS", HIST_SUB_BITS), ("TQ_HIST_OCTAVES", HIST_OCTAVES), ("TQ_HIST_BUCKETS", HIST_BUCKETS),
        ("TQ_HIST_WAIT", HIST_WAIT), ("TQ_HIST_HANDSHAKE", HIST_HANDSHAKE),
    ):
        out.append(f"#define {name} {value}")
    out.append("struct tq_event {")
    for name, ctype, _fmt, arr in EVENT_FIELDS:
        out.append(f"    {ctype} {name}{f'[{arr}]' if arr else ''};")
    out.append("};")
    out.append(f'_Static_assert(sizeof(struct tq_event) == {EVENT_SIZE}, "tq_event: see probes/layout.py");')
    return "\n".join(out) + "\n"


def bucket_of(us: int) -> int:
    """The histogram bucket of a value in microseconds (the C side: tq_hist_bucket)."""
    if us < HIST_SUB:
        return max(us, 0)
    octave = us.bit_length() - 1
    if octave >= HIST_OCTAVES:
        return HIST_BUCKETS - 1
    sub = (us >> (octave - HIST_SUB_BITS)) & (HIST_SUB - 1)
    return (octave - HIST_SUB_BITS + 1) * HIST_SUB + sub


def bucket_bounds(index: int) -> tuple[float, float]:
    """[low, high) of a bucket, in microseconds."""
    if index < HIST_SUB:
        return float(index), float(index + 1)
    octave = index // HIST_SUB + HIST_SUB_BITS - 1
    sub = index % HIST_SUB
    width = 1 << (octave - HIST_SUB_BITS)
    low = (1 << octave) + sub * width
    return float(low), float(low + width)


# ---- struct tq_synq_rec: one record of the tcp iterator (probes/synq.py, synq.bpf.c).
# LISTEN: `cookie` is the listener's own socket cookie, `qlen` its icsk_accept_queue.qlen (the
# kernel's SYN-queue count). NEW_SYN_RECV (a request socket) and SYN_RECV (a Fast Open child):
# `cookie` is that of the listener it waits on (rsk_listener), `qlen` 0, and `family`, `rport`
# (network order, as skc_dport) and `raddr` (4 or 16 bytes) name the peer: the sampler gives the
# request's sock_diag row to that member by them.
SYNQ_FIELDS: tuple[tuple[str, str, str, int], ...] = (
    ("cookie", "u64", "Q", 0),
    ("qlen", "u32", "I", 0),
    ("state", "u8", "B", 0),
    ("family", "u8", "B", 0),
    ("rport", "u16", "H", 0),
    ("raddr", "u8", "16s", 16),
)
SYNQ_REC = struct.Struct("<" + "".join(fmt for _n, _c, fmt, _a in SYNQ_FIELDS))
SYNQ_REC_SIZE = 32
assert SYNQ_REC.size == SYNQ_REC_SIZE, f"tq_synq_rec is {SYNQ_REC.size} bytes, expected {SYNQ_REC_SIZE}"


def synq_c_header() -> str:
    """The C definition of struct tq_synq_rec, from SYNQ_FIELDS."""
    out = ["// ---- shared with Python: generated from probes/layout.py", "struct tq_synq_rec {"]
    for name, ctype, _fmt, arr in SYNQ_FIELDS:
        out.append(f"    {ctype} {name}{f'[{arr}]' if arr else ''};")
    out.append("};")
    out.append(f'_Static_assert(sizeof(struct tq_synq_rec) == {SYNQ_REC_SIZE}, "tq_synq_rec: see probes/layout.py");')
    return "\n".join(out) + "\n"
