#!/usr/bin/env python3
"""Socket holder for bench/scale_fixture.py: runs inside the fixture's netns.

Opens LISTEN sockets and/or loopback connections (both ends kept open), half-closes
some from the client side (server end -> CLOSE_WAIT, client end -> FIN_WAIT2, which
never times out while the client still holds its fd), prints one JSON "ready" line,
then holds everything until stdin closes or --max-life seconds pass.

Standard library only; started by ScaleFixture, never by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if need > hard:
        try:  # needs CAP_SYS_RESOURCE; the fixture sizes holders to fit the hard limit anyway
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            sys.exit(f"need {need} fds, hard RLIMIT_NOFILE is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen-base", type=int, default=0, help="first port of the plain listeners")
    ap.add_argument("--listen-count", type=int, default=0)
    ap.add_argument("--v6-every", type=int, default=5, help="every Nth plain listener binds ::1 (0: none)")
    ap.add_argument("--conn-port", type=int, default=0, help="port of the accepting listener")
    ap.add_argument("--conns", type=int, default=0, help="connections (2 sockets each)")
    ap.add_argument("--close-wait", type=int, default=0, help="of --conns: half-closed by the client after accept")
    ap.add_argument("--queued-port", type=int, default=0, help="listener whose children are never accepted")
    ap.add_argument("--queued", type=int, default=0, help="connections left in that accept queue, then half-closed")
    ap.add_argument("--sources", type=int, default=8, help="client source addresses 127.0.0.1..N")
    ap.add_argument("--max-life", type=float, default=1800.0)
    args = ap.parse_args()

    # Bounded in time whatever happens to the parent.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
    signal.alarm(int(args.max_life))
    raise_nofile(args.listen_count + 2 * args.conns + 2 * args.queued + 256)

    held: list[socket.socket] = []
    t0 = time.monotonic()
    for i in range(args.listen_count):
        port = args.listen_base + i
        if args.v6_every and i % args.v6_every == args.v6_every - 1:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.bind(("::1", port))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", port))
        s.listen(128)
        held.append(s)

    def client(k: int, port: int) -> socket.socket:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        c.bind((f"127.0.0.{1 + k % args.sources}", 0))
        c.connect(("127.0.0.1", port))
        return c

    if args.conns:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", args.conn_port))
        srv.listen(4096)
        held.append(srv)
        pairs: list[tuple[socket.socket, socket.socket]] = []
        done = 0
        while done < args.conns:
            batch = min(1000, args.conns - done)
            clients = [client(done + k, args.conn_port) for k in range(batch)]
            for c in clients:
                a, _ = srv.accept()
                pairs.append((c, a))
            done += batch
        for c, _a in pairs[: args.close_wait]:
            c.shutdown(socket.SHUT_WR)
        for c, a in pairs:
            held.extend((c, a))

    if args.queued:
        q = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        q.bind(("127.0.0.1", args.queued_port))
        q.listen(args.queued + 16)  # capped by the netns' somaxconn
        held.append(q)
        for k in range(args.queued):
            c = client(k, args.queued_port)
            c.shutdown(socket.SHUT_WR)
            held.append(c)

    print(json.dumps({"ready": True, "pid": os.getpid(), "fds": len(held), "seconds": round(time.monotonic() - t0, 3)}),
          flush=True)
    try:
        sys.stdin.read()  # EOF: the fixture is done with us
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
