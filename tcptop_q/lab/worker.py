"""Small servers and clients that the lab runs inside its netns (python -m tcptop_q.lab.worker)."""

from __future__ import annotations

import argparse
import signal
import socket
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
    """Connect one at a time, so the kernel's order of events is deterministic."""
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
    print(f"connected {connected}", flush=True)
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
    args = p.parse_args(argv)
    return serve(args) if args.cmd == "serve" else clients(args)


if __name__ == "__main__":
    sys.exit(main())
