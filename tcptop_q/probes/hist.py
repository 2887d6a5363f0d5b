"""Quantiles from the kernel's latency histograms (probes/layout.py geometry).

Pure functions, no kernel: the BPF side counts samples into log2-octave buckets
with 16 linear sub-buckets each (width <= 1/16 of the value), plus count, sum
and an exact max. A quantile is interpolated linearly inside the bucket that
holds its rank, and never reported above the exact max: the error is at most
one bucket width, 6.25 % of the value (docs/ACCEPT.md).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..model import HistCounts, LatencySummary
from .layout import bucket_bounds


def quantile(buckets: Mapping[int, int], q: float, max_ns: int | None = None) -> float | None:
    """The q-quantile (0 < q <= 1) in seconds; None for an empty histogram."""
    total = sum(n for n in buckets.values() if n > 0)
    if total <= 0:
        return None
    rank = max(q * total, 1e-9)
    seen = 0
    for index in sorted(buckets):
        n = buckets[index]
        if n <= 0:
            continue
        if seen + n >= rank:
            low, high = bucket_bounds(index)
            value_us = low + (high - low) * (rank - seen) / n
            value = value_us / 1e6
            if max_ns is not None and max_ns > 0:
                value = min(value, max_ns / 1e9)
            return value
        seen += n
    return None  # not reached: rank <= total


def delta(now: HistCounts, before: HistCounts | None) -> HistCounts:
    """Samples added between two readings of the same histogram (max: the newer one's)."""
    if before is None:
        return now
    buckets = {i: n - before.buckets.get(i, 0) for i, n in now.buckets.items()}
    return HistCounts(
        count=max(0, now.count - before.count),
        sum_ns=max(0, now.sum_ns - before.sum_ns),
        max_ns=now.max_ns,
        buckets={i: n for i, n in buckets.items() if n > 0},
    )


def summary(h: HistCounts | None, exact_max: bool = True) -> LatencySummary | None:
    """The model's summary; `exact_max` False for a window (the max since live is not the window's)."""
    if h is None:
        return None
    top = max((i for i, n in h.buckets.items() if n > 0), default=None)
    if exact_max or top is None:
        max_s = h.max_ns / 1e9
        cap: int | None = h.max_ns
    else:
        max_s = min(bucket_bounds(top)[1] / 1e6, h.max_ns / 1e9) if h.max_ns else bucket_bounds(top)[1] / 1e6
        cap = int(max_s * 1e9)
    return LatencySummary(
        count=h.count,
        sum_s=h.sum_ns / 1e9,
        max_s=max_s,
        p50_s=quantile(h.buckets, 0.50, cap),
        p90_s=quantile(h.buckets, 0.90, cap),
        p99_s=quantile(h.buckets, 0.99, cap),
        buckets=tuple((bucket_bounds(i)[1] / 1e6, n) for i, n in sorted(h.buckets.items()) if n > 0),
    )


def add(a: HistCounts | None, b: HistCounts | None) -> HistCounts | None:
    """Two histograms as one (listeners whose BPF entries share a key)."""
    if a is None or b is None:
        return a if b is None else b
    buckets = dict(a.buckets)
    for i, n in b.buckets.items():
        buckets[i] = buckets.get(i, 0) + n
    return HistCounts(a.count + b.count, a.sum_ns + b.sum_ns, max(a.max_ns, b.max_ns), buckets)
