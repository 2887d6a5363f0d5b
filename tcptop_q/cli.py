"""Command line: the TUI (default), `--once [--json]`, `--batch`, `--ebpf`, `lab`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from . import lifecycle, model
from .model import LatencySummary, Snapshot, safe_text

PROG = "tcpq-top"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2: never a usage dump or traceback
        raise UsageError(message)


def _number(kind: type, name: str, lo: float, hi: float):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a {'whole ' if kind is int else ''}number, not {text!r}") from None
        if value != value or not lo <= value <= hi:  # NaN too
            bounds = f"{int(lo)} and {int(hi)}" if kind is int else f"{lo:g} and {hi:g}"
            raise argparse.ArgumentTypeError(f"{name} must be between {bounds}, not {text!r}")
        return value

    return parse


SEVERITY = "severity"  # the TUI's default: what is wrong now first (diagnosis.severity_rank)
# Column headers (the TUI's and --batch's) accepted as sort names too: `--sort OVF/s`.
SORT_HEADERS = {
    "LISTEN": "lport", "PORT": "lport", "NETNS": "netns", "PID/COMM": "pid", "PID": "pid",
    "ACCEPT-Q": "fill", "ACCQ": "fill", "SYN-Q": "syn_queue", "SYNQ": "syn_queue",
    "DROP/S": "drop_rate", "DROPS": "drops", "OVF/S": "overflow_rate", "OVF": "overflows",
    "RTX/S": "synack_retrans_rate", "RTX": "synack_retrans", "QUE/S": "queued_rate", "QUEUED": "queued",
    "ACC/S": "accepted_rate", "PEAK": "peak_accept_queue", "ESTAB": "established",
    "CL-WT": "close_wait", "CLWAIT": "close_wait",
}


def _netns_arg(text: str) -> int | str:
    if text.isdigit():
        return _number(int, "--netns", 1, 2**32 - 1)(text)
    if not text or len(text) > 256 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"--netns wants an inode or a name, not {safe_text(text, 40)!r}")
    return text


def _sort_key(text: str) -> str:
    if text in model.SORT_KEYS or text == SEVERITY:
        return text
    key = SORT_HEADERS.get(text.upper())
    if key is None:
        names = ", ".join((SEVERITY, *model.SORT_KEYS))
        heads = " ".join(sorted({h for h in SORT_HEADERS if "/" in h or "-" in h}))
        raise argparse.ArgumentTypeError(f"unknown sort column {text!r} (one of: {names}; or a header: {heads})")
    return key


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tcpq-top")
    except Exception:
        return "unknown"


EPILOG = """examples:
  sudo tcpq-top                          every listener in every netns, live
  sudo tcpq-top --port 8080 --sort OVF/s one port, by overflows per second
  sudo tcpq-top --once --json | jq .     one JSON snapshot (docs/JSON.md)
  sudo tcpq-top --batch -n 10 -d 2       ten text reports, 2 s apart (like top -b)
  sudo tcpq-top --record incident.gz     watch and record; later:
  tcpq-top --replay incident.gz          replay it (no root needed)
  tcpq-top lab list                      lab scenarios (tcpq-top lab run NAME)

keys (the TUI; ? shows them all with the legend of every number):
  enter open  esc back  s sort  r reverse  t totals/rates  F2 columns  / filter
  n netns  f feed  F follow the selected listener  c CLOSE_WAIT  p pause  q quit

exit codes:
  0 done   1 could not run (no terminal UI, lab or BPF failure, internal error)
  2 bad input (an option, a netns or pid that does not exist, a bad recording)
  128+N ended by signal N (130 for Ctrl-C)

Run as root for every netns and eBPF (docs/PRIVILEGES.md)."""


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="A top for Linux TCP listen sockets: accept/SYN queues, overflows, drops, live state transitions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="sample twice, INTERVAL apart, print one report and exit")
    mode.add_argument("--batch", action="store_true", help="print a text report every DELAY seconds (like top -b)")
    mode.add_argument("--ebpf", action="store_true", help="print the BPF program and the hook serving each metric, then exit")
    mode.add_argument("--serve", metavar="[ADDR:]PORT", help="no TUI: serve Prometheus metrics on /metrics (default address 127.0.0.1)")
    p.add_argument("--json", action="store_true", help="with --once/--batch: the JSON snapshot contract, one per line")
    p.add_argument("-i", "--interval", type=_number(float, "--interval", 0.05, 3600), default=None, help="seconds between samples (default 1)")
    p.add_argument("-d", "--delay", type=_number(float, "--delay", 0.05, 3600), default=None, help="alias of --interval for --batch")
    p.add_argument("-n", "--iterations", type=_number(int, "-n", 1, 10**9), default=None, help="--batch: stop after N reports")
    p.add_argument("--port", type=_number(int, "--port", 1, 65535), help="only listeners on this local port")
    p.add_argument("--pid", type=_number(int, "--pid", 1, 2**22), help="only sockets of this process")
    p.add_argument("--netns", type=_netns_arg, metavar="NETNS",
                   help="only this network namespace: its inode (`stat -L -c %%i /proc/PID/ns/net`), its name "
                        "(an `ip netns` name, a container, a pod), or SOURCE:PREFIX (docker:3f2a, podman:web, k8s:default/)")
    p.add_argument("--sort", type=_sort_key, default=None,
                   help="sort column, a name or a header (OVF/s); default: the TUI severity (what is wrong now), "
                        "--once/--batch overflow_rate, then drop_rate")
    p.add_argument("-r", "--reverse", action="store_true", help="reverse the sort")
    p.add_argument("--no-bpf", action="store_true", help="netlink and /proc only; do not load eBPF programs")
    p.add_argument("--accept-hook", choices=("auto", "syscall", "kretprobe", "off"), default="auto",
                   help="how accept() is seen: auto (kretprobe where kprobes exist, else the accept "
                        "syscalls), or off (no accepted/accept_wait/handshake)")
    p.add_argument("--tracepoints", choices=("auto", "classic"), default="auto",
                   help="auto: raw tracepoints where the kernel has them (cheaper: no trace-event record), "
                        "else classic; classic: trace-event tracepoints only")
    p.add_argument("--wide", action="store_true", help="--batch: all columns, wider than 80")
    p.add_argument("--record", metavar="FILE", help="also write every snapshot and feed event to FILE (gzip JSON lines)")
    p.add_argument("--replay", metavar="FILE", help="show a recording instead of the live kernel (no root needed)")
    p.add_argument("--speed", type=_number(float, "--speed", 0.5, 10), default=1.0, help="--replay: playback speed, 0.5 to 10")
    p.add_argument("--demo", action="store_true", help="run the lab scenarios in a private netns and watch them (root)")
    p.add_argument("--max-listeners", type=_number(int, "--max-listeners", 1, 10**6), default=None,
                   help="--serve: export the N most active listeners (default 2000)")
    p.add_argument("--web-config", metavar="FILE", help="--serve: TLS and basic auth (Prometheus exporter-toolkit format)")
    return p


# ------------------------------------------------------------------- text output


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else str(value)


def _fmt_wait(lat: LatencySummary | None, field: str = "p99_s") -> str:
    """A latency quantile in ms ('-' unknown; '.' nothing in the window)."""
    if lat is None:
        return "-"
    value = getattr(lat, field)
    if not lat.count or value is None:
        return "."
    ms = value * 1000
    return f"{ms:.1f}ms" if ms < 10 else (f"{ms:.0f}ms" if ms < 1000 else f"{value:.1f}s")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


BATCH_COLUMNS = (
    # header, width, getter, wide-only
    ("LISTEN", 20, lambda lst: safe_text(lst.key.label(), 40), False),
    ("NETNS", 24, lambda lst: str(lst.netns), True),  # format_batch puts the netns name here
    ("PID/COMM", 15, lambda lst: f"{_fmt_int(lst.pid)}/{safe_text(lst.comm, 32)}" if lst.pid else "-", False),
    ("ACCQ", 9, lambda lst: f"{lst.accept_queue}/{lst.backlog}", False),
    ("SYNQ", 5, lambda lst: str(lst.syn_queue), False),
    ("DROP/s", 6, lambda lst: _fmt_rate(lst.drop_rate), False),
    ("OVF/s", 6, lambda lst: _fmt_rate(lst.overflow_rate), False),
    ("RTX/s", 5, lambda lst: _fmt_rate(lst.synack_retrans_rate), True),
    ("QUE/s", 6, lambda lst: _fmt_rate(lst.queued_rate), False),
    ("ACC/s", 6, lambda lst: _fmt_rate(lst.accepted_rate), True),
    ("WAIT99", 7, lambda lst: _fmt_wait(lst.accept_wait_recent), True),
    ("HS50", 6, lambda lst: _fmt_wait(lst.handshake, "p50_s"), True),
    ("PEAK", 5, lambda lst: _fmt_int(lst.peak_accept_queue), True),
    ("DROPS", 8, lambda lst: str(lst.drops), True),
    ("ESTAB", 5, lambda lst: str(lst.children.get("ESTABLISHED", 0)), True),
    ("CLWAIT", 6, lambda lst: str(lst.children.get("CLOSE_WAIT", 0)), False),
)


def format_batch(snap: Snapshot, wide: bool = False) -> str:
    cols = [c for c in BATCH_COLUMNS if wide or not c[3]]
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.time))
    if snap.sources.bpf:
        bpf = "bpf live"
    else:
        bpf = "bpf off"
    ovf = sum(ns.rates.get("ListenOverflows", 0.0) for ns in snap.netns)
    drp = sum(ns.rates.get("ListenDrops", 0.0) for ns in snap.netns)
    lines = [
        _cut(
            f"{PROG} {stamp} {bpf}  ovf/s {_fmt_rate(ovf)}  drop/s {_fmt_rate(drp)}  listeners {len(snap.listeners)}  "
            f"netns {len(snap.netns)}  {safe_text(snap.hostname, 20)} {snap.kernel}",
            200 if wide else 80,
        ),
    ]
    if not snap.sources.bpf and snap.sources.bpf_error:
        lines.append(_cut("note: " + safe_text(snap.sources.bpf_error, 200), 200 if wide else 80))
    if snap.sources.lost_events:
        lines.append(f"feed: {snap.sources.lost_events} events lost (counts stay exact)")
    for note in snap.sources.notes:
        lines.append(_cut("note: " + safe_text(note, 200), 200 if wide else 80))
    head = []
    for name, width, _get, _w in cols:
        head.append(name.ljust(width) if name in ("LISTEN", "PID/COMM", "NETNS") else name.rjust(width))
    lines.append(" ".join(head).rstrip())
    names = {ns.inode: ns.name for ns in snap.netns if ns.name is not None}
    for lst in snap.listeners:
        cells = []
        for name, width, get, _w in cols:
            if name == "NETNS":
                label = names.get(lst.netns)
                text = _cut(str(lst.netns) if label is None else safe_text(label, 128), width)
            else:
                text = _cut(get(lst), width)
            cells.append(text.ljust(width) if name in ("LISTEN", "PID/COMM", "NETNS") else text.rjust(width))
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------- running


def _write(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: stop quietly
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        finally:
            raise SystemExit(0)


def _emit(snap: Snapshot, args: argparse.Namespace) -> None:
    snap = _sorted(snap, args)
    if args.json:
        _write(json.dumps(model.snapshot_to_json(snap), separators=(",", ":")))
    else:
        _write(format_batch(snap, wide=args.wide))


def _sorted(snap: Snapshot, args: argparse.Namespace) -> Snapshot:
    from dataclasses import replace

    key = args.sort or "overflow_rate"
    if key == SEVERITY:
        from .diagnosis import severity_rank

        ordered = sorted(model.sort_listeners(snap.listeners, "overflow_rate"), key=severity_rank)
        if args.reverse:
            ordered.reverse()
        return replace(snap, listeners=ordered)
    return replace(snap, listeners=model.sort_listeners(snap.listeners, key, args.reverse))


def check_pid(pid: int) -> None:
    if not os.path.exists(f"/proc/{pid}"):
        raise UsageError(f"--pid {pid}: no such process")


def _filters(args: argparse.Namespace):
    from .source import Filters

    return Filters(port=args.port, pid=args.pid, netns=args.netns)


def _make_source(args: argparse.Namespace, interval: float, blocking_owners: bool, feed: bool = True):
    from .source import LiveSource

    source = LiveSource(
        interval=interval,
        filters=_filters(args),
        use_bpf=not args.no_bpf,
        accept_hook=None if args.accept_hook == "auto" else args.accept_hook,
        tracepoints=None if args.tracepoints == "auto" else args.tracepoints,
        blocking_owners=blocking_owners,
        feed=feed,
        # Only the TUI lists children one by one (and a recording keeps them for its replay).
        keep_connections=not (args.once or args.batch) or bool(args.record),
    )
    lifecycle.on_forced_exit(source.close)
    if args.record:
        from .record import RecordError, RecordingSource

        try:
            return RecordingSource(source, args.record, argv=sys.argv[1:])
        except (RecordError, OSError) as exc:
            source.close()
            raise UsageError(f"--record {args.record}: {_one_line(exc)}") from None
    return source


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _replay_source(args: argparse.Namespace):
    from .record import RecordError, ReplaySource

    try:
        return ReplaySource(args.replay, speed=args.speed, filters=_filters(args))
    except (RecordError, ValueError, OSError) as exc:
        raise UsageError(_one_line(exc) if isinstance(exc, RecordError) else f"--replay {args.replay}: {_one_line(exc)}") from None


def _pick_netns(query: int | str, entries: Sequence[tuple[int, str | None, str | None]], where: str) -> int:
    from .probes.names import describe, match_netns

    found = match_netns(str(query), entries)
    shown = safe_text(str(query), 60)
    if not found:
        raise UsageError(f"--netns {shown}: no such network namespace {where} "
                         "(give an inode, a name from the NETNS column, or SOURCE:PREFIX)")
    if len(found) > 1:
        named = {ino: (n, s) for ino, n, s in entries}
        some = "; ".join(describe(ino, *named[ino]) for ino in sorted(found)[:3])
        raise UsageError(f"--netns {shown} names {len(found)} network namespaces ({some}): give more of it, or the inode")
    return found[0]


def _resolve_netns(args: argparse.Namespace) -> int:
    """--netns as an inode: a name looked up among the namespaces there are now (or in the recording)."""
    if args.replay:
        if isinstance(args.netns, int):
            return args.netns  # it may appear later in the recording
        from .record import RecordError, ReplaySource

        try:
            replay = ReplaySource(args.replay)
            try:
                first = replay.sample()
            finally:
                replay.close()
        except (RecordError, ValueError, OSError):
            return -1  # the replay itself will say what is wrong with the file
        entries = [(ns.inode, ns.name, ns.name_source) for ns in first.netns]
        return _pick_netns(args.netns, entries, "in the recording's first snapshot")
    from .probes.names import NetnsNamer
    from .probes.netns import NetnsRef, current_netns, discover

    refs = discover()
    home = current_netns()
    refs.setdefault(home, NetnsRef(home, "/proc/thread-self/ns/net", os.getpid(), pids=[os.getpid()]))
    names = NetnsNamer().names({ino: ref.pids for ino, ref in refs.items()})
    entries = [(ino, names[ino].name if ino in names else None, names[ino].source if ino in names else None)
               for ino in refs]
    who = "that this user can see (other users' namespaces need root)" if os.geteuid() else "on this host"
    return _pick_netns(args.netns, entries, who)


def run_replay(args: argparse.Namespace) -> int:
    from .record import RecordError

    source = _replay_source(args)
    try:
        if args.batch or args.once:
            count = 0
            limit = 1 if args.once else args.iterations  # --once: the first recorded tick
            try:
                for snap in source:
                    if limit is not None and count >= limit:
                        break
                    _emit(snap, args)
                    count += 1
            except RecordError as exc:
                print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
                return 2
            return 0
        return _run_app(source, args, clock=source.clock)
    finally:
        source.close()


def run_demo(args: argparse.Namespace, interval: float) -> int:
    from .lab.netns import LabError
    from .lab.scenarios import run_demo as lab_demo

    try:
        with lab_demo(duration=3600) as (ns, _infos):
            args.netns = ns.inode
            return run_tui(args, interval)
    except LabError as exc:
        print(f"{PROG}: --demo: {_one_line(exc)}", file=sys.stderr)
        return 1


def run_once(args: argparse.Namespace, interval: float) -> int:
    source = _make_source(args, interval, blocking_owners=True)
    try:
        source.start_bpf()
        source.wait_bpf(timeout=90)  # counters of both sources start together
        source.sample(children=True)
        time.sleep(interval)
        snap = source.sample(children=True)
        _emit(snap, args)
    finally:
        source.close()
    return 0


def run_batch(args: argparse.Namespace, interval: float) -> int:
    # The text report shows no transitions: without --json (CLOSE_WAIT ages) or --record
    # (the feed is recorded) the kernel is told not to send them, which is most of the
    # probes' cost under a connection storm.
    feed = bool(args.json or args.record)
    source = _make_source(args, interval, blocking_owners=False, feed=feed)
    try:
        source.start_bpf()
        source.wait_bpf(timeout=90)
        # The baseline is not a report: it is not recorded either, so `--batch --replay` of
        # a `--batch -n N --record` file prints the same N reports. It resolves owners on the
        # spot, as --once does: like `top -b -n 1`, the first report names every owner; later
        # ticks find new ones in the background.
        live = getattr(source, "inner", source)
        live.sampler.blocking_owners = True
        try:
            live.sample(children=True)
        finally:
            live.sampler.blocking_owners = False
        count = 0
        next_at = time.monotonic() + interval
        while args.iterations is None or count < args.iterations:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            _emit(source.sample(), args)
            count += 1
    finally:
        source.close()
    return 0


def run_ebpf(args: argparse.Namespace) -> int:
    from .source import load_bpf

    probes, error = load_bpf(args.port, args.netns, None if args.accept_hook == "auto" else args.accept_hook,
                             None if args.tracepoints == "auto" else args.tracepoints)
    if probes is None:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    try:
        text = probes.program_text()
        hooks = sorted(probes.hooks.items())
    except Exception as exc:  # never a traceback: say why in one line
        print(f"{PROG}: cannot build the BPF program: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        probes.close()
    _write(text)
    _write("\n/* hooks on this kernel:")
    for metric, hook in hooks:
        _write(f" *   {metric:<20} {hook}")
    _write(" */")
    return 0


def _run_app(source, args: argparse.Namespace, clock=None) -> int:
    try:
        from .app import TcpqTopApp
    except ImportError as exc:
        print(f"{PROG}: the terminal UI is not available ({exc}); use --batch or --once", file=sys.stderr)
        return 1
    app = TcpqTopApp(source, sort=args.sort or SEVERITY, reverse=args.reverse, clock=clock)
    try:
        app.run()
    finally:
        source.close()  # probes detached before anything else can go wrong
        _reap_ui_threads()
    return int(app.return_code or 0)


def _reap_ui_threads(timeout: float = 3.0) -> None:
    """If the terminal vanished under the UI, its driver threads may not stop on their own
    (and they are not daemons): once everything of ours is closed, do not wait on them."""
    import threading

    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() and not t.daemon and t is not threading.current_thread() for t in threading.enumerate()):
        lifecycle.arm_force_exit(1, 0.0)
        time.sleep(10)  # the watchdog ends the process


def run_tui(args: argparse.Namespace, interval: float) -> int:
    source = _make_source(args, interval, blocking_owners=False)
    try:
        source.start_bpf_after_first_frame()
        return _run_app(source, args)
    finally:
        source.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "lab":
            from .lab.cli import main as lab_main

            return lab_main(argv[1:])
        args = build_parser().parse_args(argv)
        if args.json and not (args.once or args.batch):
            raise UsageError("--json goes with --once or --batch")
        if args.iterations is not None and not args.batch:
            raise UsageError("-n goes with --batch")
        if args.replay and (args.record or args.demo or args.ebpf):
            raise UsageError("--replay goes with neither --record, --demo nor --ebpf")
        if args.demo and (args.once or args.batch or args.ebpf):
            raise UsageError("--demo runs the TUI: it goes with neither --once, --batch nor --ebpf")
        if args.speed != 1.0 and not args.replay:
            raise UsageError("--speed goes with --replay")
        if args.record and (args.once or args.ebpf):
            raise UsageError("--record goes with the TUI or --batch")
        if args.serve is not None and (args.json or args.record or args.replay or args.demo):
            raise UsageError("--serve goes with neither --json, --record, --replay nor --demo")
        if args.serve is None and (args.max_listeners is not None or args.web_config):
            raise UsageError("--max-listeners and --web-config go with --serve")
        if args.max_listeners is None:
            args.max_listeners = 2000
        interval = args.interval or args.delay or 1.0
        if args.netns is not None and not args.demo:
            args.netns = _resolve_netns(args)
        if args.pid is not None and not args.replay and not args.demo:  # a replay's pids are the recording's
            check_pid(args.pid)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    lifecycle.on_exit_signals(grace=5.0)  # unwind like an exception: finally blocks detach BPF
    try:
        if args.replay:
            return run_replay(args)
        if args.demo:
            return run_demo(args, interval)
        if args.ebpf:
            return run_ebpf(args)
        if args.serve is not None:
            from .export.server import run_serve

            return run_serve(args, interval)
        if args.once:
            return run_once(args, interval)
        if args.batch:
            return run_batch(args, interval)
        return run_tui(args, interval)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 1
    except Exception as exc:  # a bug or an unforeseen kernel answer: one line, details on request
        if os.environ.get("TCPQ_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} (TCPQ_DEBUG=1 shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
