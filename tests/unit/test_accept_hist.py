"""The latency histogram maths without root: bucket geometry (Python and the C of
probes/accept.bpf.c agree), quantile error bounds, deltas, the shared event layout."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tcptop_q.model import HistCounts
from tcptop_q.probes import hist, layout
from tests.conftest import need

ACCEPT_C = Path(__file__).parents[2] / "tcptop_q" / "probes" / "accept.bpf.c"

# Values spread over 1 us .. 20 min, deterministic.
VALUES_US = sorted({int(1.37 ** k) + k for k in range(0, 66)})


def test_buckets_cover_every_value_once_and_are_narrow() -> None:
    previous_high = 0.0
    for index in range(layout.HIST_BUCKETS - 1):
        low, high = layout.bucket_bounds(index)
        assert low == previous_high  # contiguous, no gaps or overlaps
        previous_high = high
        assert (high - low) <= max(1.0, low / layout.HIST_SUB)  # width <= low/16 (or 1 us)
    for us in VALUES_US:
        low, high = layout.bucket_bounds(layout.bucket_of(us))
        assert low <= us < high, us


def test_c_bucket_function_matches_python(tmp_path: Path) -> None:
    cc = shutil.which("cc")
    need(cc is not None, "needs a C compiler (cc) to build the BPF bucket function natively")
    assert cc is not None
    text = ACCEPT_C.read_text()
    funcs = re.search(r"static __always_inline u32 tq_log2.*?\n}\n.*?static __always_inline u32 tq_hist_bucket.*?\n}\n",
                      text, re.S)
    assert funcs, "tq_log2 / tq_hist_bucket not found in accept.bpf.c"
    defines = "\n".join(line for line in layout.c_header().splitlines() if line.startswith("#define TQ_HIST"))
    prog = tmp_path / "b.c"
    prog.write_text(
        "#include <stdio.h>\n#include <stdint.h>\ntypedef uint64_t u64; typedef uint32_t u32;\n"
        "#define __always_inline inline\n" + defines + "\n" + funcs.group(0)
        + "int main(void){unsigned long long v; while (scanf(\"%llu\", &v) == 1) printf(\"%u\\n\", tq_hist_bucket(v)); return 0;}\n"
    )
    exe = tmp_path / "b"
    subprocess.run([cc, "-O1", "-o", str(exe), str(prog)], check=True)
    values = VALUES_US + [0, 15, 16, 17, 31, 32, 33, 1 << 35, (1 << 36) - 1, 1 << 36, 1 << 40]
    out = subprocess.run([str(exe)], input="\n".join(map(str, values)), capture_output=True, text=True, check=True)
    assert [int(x) for x in out.stdout.split()] == [layout.bucket_of(v) for v in values]


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_quantiles_within_one_bucket_of_the_truth(q: float) -> None:
    samples = [v * 1000 for v in VALUES_US for _ in range(3)]  # ns
    buckets: dict[int, int] = {}
    for ns in samples:
        b = layout.bucket_of(ns // 1000)
        buckets[b] = buckets.get(b, 0) + 1
    ordered = sorted(samples)
    truth = ordered[max(0, -(-int(q * len(ordered) * 1000) // 1000) - 1)] / 1e9
    got = hist.quantile(buckets, q, max(samples))
    assert got is not None
    assert abs(got - truth) <= truth / layout.HIST_SUB + 1e-6


def test_quantile_never_above_the_exact_max_and_empty_is_none() -> None:
    assert hist.quantile({}, 0.5) is None
    one = {layout.bucket_of(1_000_000): 1}  # one sample of exactly 1 s
    assert hist.quantile(one, 0.99, 1_000_000_000) == pytest.approx(1.0, rel=1e-9)
    assert hist.summary(HistCounts()) is not None and hist.summary(HistCounts()).p50_s is None  # type: ignore[union-attr]
    assert hist.summary(None) is None


def test_delta_is_the_window_and_summary_of_it() -> None:
    a = HistCounts(count=2, sum_ns=3_000_000, max_ns=2_000_000, buckets={layout.bucket_of(1000): 1, layout.bucket_of(2000): 1})
    b = HistCounts(count=5, sum_ns=3_000_000 + 3 * 500_000_000, max_ns=500_000_000,
                   buckets={**a.buckets, layout.bucket_of(500_000): 3})
    d = hist.delta(b, a)
    assert d.count == 3 and d.buckets == {layout.bucket_of(500_000): 3}
    s = hist.summary(d, exact_max=False)
    assert s is not None and s.count == 3 and s.p50_s == pytest.approx(0.5, rel=1 / 16)
    assert s.max_s <= 0.5 + 1e-9  # capped by the exact max, not the bucket's upper edge
    both = hist.add(a, d)
    assert both is not None and both.count == 5 and both.buckets == b.buckets


def test_event_layout_is_one_definition() -> None:
    header = layout.c_header()
    assert f"sizeof(struct tq_event) == {layout.EVENT_SIZE}" in header
    assert layout.EVENT.size == layout.EVENT_SIZE
    fields = re.findall(r"^    \w+ (\w+)", header.split("struct tq_event {")[1].split("};")[0], re.M)
    assert tuple(fields) == layout.EVENT_NAMES
    assert "#define TQ_CTL_SLOTS 5" in header
