"""Small servers and clients that the lab runs inside its netns (python -m tcptop_q.lab.worker)."""

from __future__ import annotations

import argparse
import errno
import selectors
import signal
import socket
import struct
import sys
import time


def serve(args: argparse.Namespace) -> int:
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.defer_accept:
        srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, args.defer_accept)
    srv.bind((args.addr, args.port))
    srv.listen(args.backlog)
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + args.duration
    held = []
    while time.monotonic() < deadline:
        if args.mode == "no-accept":
            time.sleep(0.2)
            continue
        srv.settimeout(0.2)
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        if args.mode == "accept-hold":  # never close: CLOSE_WAIT leak
            held.append(conn)
        elif args.mode == "echo-close":  # server closes first
            conn.recv(4096)
            conn.close()
        elif args.mode == "read-until-eof":  # client closes first
            conn.settimeout(5)
            while conn.recv(4096):
                pass
            conn.close()
        if args.accept_rate:
            time.sleep(1.0 / args.accept_rate)
    return 0


def clients(args: argparse.Namespace) -> int:
    """Connect one at a time, so the kernel's order of events is deterministic.

    With --rounds N (0: until --duration ends) the round repeats every --round-gap seconds."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    deadline = time.monotonic() + args.duration if args.duration else float("inf")
    total = 0
    done = 0
    while (args.rounds == 0 or done < args.rounds) and time.monotonic() < deadline:
        if done:
            time.sleep(max(0.0, min(args.round_gap, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                break
        total += _client_round(args)
        done += 1
    print(f"connected {total}", flush=True)
    return 0


def _client_round(args: argparse.Namespace) -> int:
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    connected = 0
    socks = []
    for _ in range(args.count):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.settimeout(args.connect_timeout)
        try:
            c.connect((args.addr, args.port))
        except OSError:
            c.close()
            continue
        connected += 1
        if args.payload:
            c.sendall(args.payload.encode())
        socks.append(c)
        time.sleep(args.gap)
    if args.hold:
        time.sleep(args.hold)
    for c in socks:
        c.close()
    return connected


def stream(args: argparse.Namespace) -> int:
    """Non-blocking connects at --rate per second for --duration seconds. A connect that
    completes sends --payload and closes; one still pending after --give-up seconds is closed
    (for SYNs whose SYN-ACKs never arrive). At most --max-pending sockets at a time."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, float] = {}
    stats = {"attempted": 0, "connected": 0, "failed": 0, "gave_up": 0}
    payload = args.payload.encode()
    period = 1.0 / args.rate
    start = time.monotonic()
    deadline = start + args.duration
    next_at = start

    def drop(s: socket.socket) -> None:
        sel.unregister(s)
        del pending[s]
        s.close()

    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            while next_at <= now and len(pending) < args.max_pending:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setblocking(False)
                if args.bind:
                    s.bind((args.bind, 0))
                err = s.connect_ex((args.addr, args.port))
                stats["attempted"] += 1
                next_at += period
                if err not in (0, errno.EINPROGRESS):
                    stats["failed"] += 1
                    s.close()
                    continue
                sel.register(s, selectors.EVENT_WRITE)
                pending[s] = now
            next_at = max(next_at, now - period)  # never a burst to catch up
            for key, _ev in sel.select(max(0.0, min(next_at - now, 0.05))):
                s = key.fileobj  # type: ignore[assignment]
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    stats["connected"] += 1
                    try:
                        if payload:
                            s.send(payload)
                    except OSError:
                        pass
                else:
                    stats["failed"] += 1
                drop(s)
            for s, born in list(pending.items()):
                if now - born > args.give_up:
                    stats["gave_up"] += 1
                    drop(s)
    finally:
        for s in list(pending):
            drop(s)
        print(" ".join(f"{k} {v}" for k, v in stats.items()), flush=True)
    return 0


def ack_overflow(args: argparse.Namespace) -> int:
    """Third-ACK overflows, one per round, on a TCP_DEFER_ACCEPT listener with backlog 1.

    C connects without data (its bare ACK is dropped, it stays a request sock), A and B connect
    and send (the queue, limit 1, holds 2), then C sends: its data completes the handshake into
    a full queue. C resets; the server then accepts A and B so the next round starts empty."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    family = socket.AF_INET6 if ":" in args.addr else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 10)
    srv.bind((args.addr, args.port))
    srv.listen(1)
    print("ready", flush=True)
    deadline = time.monotonic() + args.duration
    rounds = 0
    while time.monotonic() < deadline:
        socks = []
        try:
            c = socket.socket(family, socket.SOCK_STREAM)
            socks.append(c)
            c.connect((args.addr, args.port))
            for _ in range(2):
                s = socket.socket(family, socket.SOCK_STREAM)
                socks.append(s)
                s.connect((args.addr, args.port))
                s.sendall(b"x")
            time.sleep(0.05)
            c.sendall(b"x")
            time.sleep(0.05)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            srv.settimeout(0.5)
            for _ in range(2):
                try:
                    conn, _peer = srv.accept()
                    conn.close()
                except TimeoutError:
                    break
        except OSError:
            pass
        finally:
            for s in socks:
                s.close()
        rounds += 1
        time.sleep(max(0.0, min(args.round_gap, deadline - time.monotonic())))
    print(f"rounds {rounds}", flush=True)
    return 0


def listeners(args: argparse.Namespace) -> int:
    """--count idle listeners on consecutive ports (for size and load measurements)."""
    import resource

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    socks = []
    for i in range(args.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.addr, args.base_port + i))
        s.listen(args.backlog)
        socks.append(s)
    print("ready", flush=True)
    time.sleep(args.duration)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tcptop_q.lab.worker")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--addr", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--backlog", type=int, default=5)
    s.add_argument("--mode", default="no-accept", choices=["no-accept", "accept-hold", "echo-close", "read-until-eof"])
    s.add_argument("--defer-accept", type=int, default=0)
    s.add_argument("--accept-rate", type=float, default=0.0)
    s.add_argument("--duration", type=float, default=60.0)
    c = sub.add_parser("clients")
    c.add_argument("--addr", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8080)
    c.add_argument("--count", type=int, default=10)
    c.add_argument("--payload", default="helloworld")
    c.add_argument("--connect-timeout", type=float, default=1.0)
    c.add_argument("--gap", type=float, default=0.05)
    c.add_argument("--hold", type=float, default=0.0)
    c.add_argument("--rounds", type=int, default=1)
    c.add_argument("--round-gap", type=float, default=1.0)
    c.add_argument("--duration", type=float, default=0.0)
    t = sub.add_parser("stream")
    t.add_argument("--addr", default="127.0.0.1")
    t.add_argument("--port", type=int, default=8080)
    t.add_argument("--bind", default="")
    t.add_argument("--rate", type=float, default=10.0)
    t.add_argument("--payload", default="helloworld")
    t.add_argument("--give-up", type=float, default=3.0)
    t.add_argument("--max-pending", type=int, default=256)
    t.add_argument("--duration", type=float, default=60.0)
    a = sub.add_parser("ack-overflow")
    a.add_argument("--addr", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8080)
    a.add_argument("--round-gap", type=float, default=1.0)
    a.add_argument("--duration", type=float, default=60.0)
    m = sub.add_parser("listeners")
    m.add_argument("--addr", default="127.0.0.1")
    m.add_argument("--base-port", type=int, default=20000)
    m.add_argument("--count", type=int, default=100)
    m.add_argument("--backlog", type=int, default=128)
    m.add_argument("--duration", type=float, default=60.0)
    args = p.parse_args(argv)
    run = {"serve": serve, "clients": clients, "stream": stream, "ack-overflow": ack_overflow,
           "listeners": listeners}[args.cmd]
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
