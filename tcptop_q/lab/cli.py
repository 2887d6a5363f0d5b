"""`tcpq-top lab list`, `tcpq-top lab run NAME [--duration S] [--json]`, `tcpq-top lab clean`.

Usage errors print one line and exit 2; a lab that cannot be built (not root, no iproute2)
exits 1 with one line. Ctrl-C, SIGTERM and SIGHUP end the run early: the netns and every
process the lab started are removed before the command exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from .netns import LabError, install_signal_cleanup
from .scenarios import MAX_DURATION, SCENARIOS, clean_stale, describe, run_scenario

PROG = "tcpq-top lab"
DEFAULT_DURATION = 60.0


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if value != value or not 0 < value <= MAX_DURATION:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_DURATION:g} seconds, not {text!r}")
    return value


def _scenario(text: str) -> str:
    if text not in SCENARIOS:
        raise argparse.ArgumentTypeError(f"unknown scenario {text!r} (one of: {', '.join(SCENARIOS)})")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Reproducible TCP listen-queue scenarios in a private network namespace.")
    sub = p.add_subparsers(dest="cmd", metavar="{list,run,clean}", parser_class=_Parser)
    sub.required = True
    sub.add_parser("list", help="the scenarios and what each one shows")
    sub.add_parser("clean", help="remove lab netns left by a lab run that was killed with SIGKILL")
    run = sub.add_parser("run", help="run one scenario in a private netns, then remove it")
    run.add_argument("name", type=_scenario, help="scenario name (see `tcpq-top lab list`)")
    run.add_argument("--duration", type=_duration, default=DEFAULT_DURATION,
                     help=f"seconds to run (default {DEFAULT_DURATION:g})")
    run.add_argument("--json", action="store_true", help="print the scenario facts as one JSON line")
    return p


def _list() -> int:
    width = max(len(name) for name in SCENARIOS)
    for s in SCENARIOS.values():
        seed = f" [seed {s.seed}]" if s.seed else ""
        print(f"{s.name:<{width}}  {s.summary}{seed}")
    return 0


def _say(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head`: keep running quietly, cleanup still happens
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass


def _run(name: str, duration: float, as_json: bool) -> int:
    install_signal_cleanup()
    if os.geteuid() != 0:
        print(f"{PROG}: needs root (it creates a network namespace with `ip netns add`)", file=sys.stderr)
        return 1
    reason = "done"
    code = 0
    try:
        with run_scenario(name, duration) as (_ns, info):
            if as_json:
                _say(json.dumps(info, separators=(",", ":")))
            else:
                for line in describe(info):
                    _say(line)
                _say(f"running for {duration:g} s; Ctrl-C ends it early and removes the netns")
            deadline = time.monotonic() + duration
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 0.5))
    except KeyboardInterrupt:
        reason, code = "interrupted", 130
    except SystemExit as exc:
        reason, code = f"signal {int(exc.code or 0) - 128}", int(exc.code or 1)
    except LabError as exc:
        print(f"{PROG}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    if not as_json:
        _say(f"lab {name}: {reason}; netns and processes removed")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "list":
        return _list()
    if args.cmd == "clean":
        if os.geteuid() != 0:
            print(f"{PROG}: needs root (ip netns delete)", file=sys.stderr)
            return 1
        done = clean_stale()
        for name, procs in done:
            print(f"removed {name} ({procs} processes ended)")
        if not done:
            print("no stale lab netns")
        return 0
    return _run(args.name, args.duration, args.json)
