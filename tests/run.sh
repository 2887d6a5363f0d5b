#!/usr/bin/env bash
# Lint (ruff, mypy), the whole test suite, then a check that nothing was left in the kernel.
set -u
cd "$(dirname "$0")/.."
lint=0
.venv/bin/ruff check tcptop_q tests bench || lint=1
.venv/bin/mypy tcptop_q || lint=1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ $lint -ne 0 ]; then
  echo "tests/run.sh: ruff or mypy found errors (above): the run fails" >&2
  [ $rc -eq 0 ] && rc=1
fi
if [ $rc -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests: that is a broken suite, not a pass" >&2
  rc=1
fi
left=$(ip netns list 2>/dev/null | grep -c '^tq' || true)
if [ "${left:-0}" -gt 0 ]; then
  echo "tests/run.sh: $left tq* network namespace(s) left behind:" >&2; ip netns list >&2; rc=1
fi
if command -v bpftool >/dev/null && [ "$(id -u)" -eq 0 ]; then
  # ours: tq_*, and the tcp iterator (probes/synq.py), a tracing program the kernel names "tcp"
  progs=$(bpftool prog show 2>/dev/null | grep -cE ' name tq_|^[0-9]+: tracing +name tcp ' || true)
  if [ "${progs:-0}" -gt 0 ]; then
    echo "tests/run.sh: $progs tcpq-top BPF program(s) still loaded" >&2; rc=1
  fi
fi
exit $rc
