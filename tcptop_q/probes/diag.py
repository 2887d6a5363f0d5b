"""sock_diag (NETLINK_SOCK_DIAG / inet_diag) dumps of TCP sockets, parsed by hand.

A hand-written `struct` parser is 14-20x faster than pyroute2 on the same dumps
(docs/BENCHMARKS.md), and we read only the fields we need: the fixed
inet_diag_msg header and, for LISTEN rows, SK_MEMINFO_DROPS.

Layouts (include/uapi/linux/inet_diag.h, sock_diag.h):
  inet_diag_req_v2: u8 family, u8 protocol, u8 ext, u8 pad, u32 states, sockid
  inet_diag_sockid: be16 sport, be16 dport, be32 src[4], be32 dst[4], u32 if, u32 cookie[2]
  inet_diag_msg:    u8 family, u8 state, u8 timer, u8 retrans, sockid,
                    u32 expires, u32 rqueue, u32 wqueue, u32 uid, u32 inode
For LISTEN rows the kernel puts sk_ack_backlog in rqueue and sk_max_ack_backlog
in wqueue (tcp_diag_get_info); request sockets come back as SYN_RECV with inode 0.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3

INET_DIAG_SKMEMINFO = 7
INET_DIAG_SKV6ONLY = 11  # u8, sent for every AF_INET6 socket (inet_diag_msg_attrs_fill)
SK_MEMINFO_DROPS = 8

TCP_ESTABLISHED = 1
TCP_SYN_RECV = 3
TCP_CLOSE_WAIT = 8
TCP_LISTEN = 10
TCP_NEW_SYN_RECV = 12

ALL_STATES = 0xFFF & ~(1 << 0)


def state_mask(*states: int) -> int:
    mask = 0
    for state in states:
        mask |= 1 << state
    return mask


# Per-tick dump: listeners, their half-open request socks, and the CLOSE_WAIT rows.
TICK_STATES = state_mask(TCP_LISTEN, TCP_SYN_RECV, TCP_NEW_SYN_RECV, TCP_CLOSE_WAIT)
# Occasional dump of every child state (all but LISTEN and the request socks).
CHILD_STATES = ALL_STATES & ~state_mask(TCP_LISTEN, TCP_NEW_SYN_RECV)

_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI")
_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
_PORTS = struct.Struct(">HH")
_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_COOKIE = struct.Struct("=Q")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_MSG_LEN = 72  # sizeof(struct inet_diag_msg)


@lru_cache(maxsize=65536)
def format_addr(family: int, raw: bytes) -> str:
    """Python ipaddress compressed form, as the JSON contract asks (no brackets)."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return ipaddress.IPv6Address(raw).compressed


class DiagRow(NamedTuple):
    """One socket of a dump (a tuple: built for every row of every tick)."""

    family: int
    state: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    cookie: int
    rqueue: int
    wqueue: int
    uid: int
    inode: int
    drops: int  # SK_MEMINFO_DROPS, -1 when the kernel sent no skmeminfo (request socks)
    retrans: int  # SYN-ACK retransmits for request socks
    bound_if: int = 0  # idiag_if: SO_BINDTODEVICE ifindex, 0 = any (a reuseport group shares it)
    v6only: int = -1  # IPV6_V6ONLY of an AF_INET6 socket (from dumps with skmeminfo), -1 = not read


class DiagError(OSError):
    pass


class DiagSocket:
    """One NETLINK_SOCK_DIAG socket; bound to the netns it was created in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self._seq = 0
        self._buf = bytearray(1 << 18)
        # Rows of the previous dump of each kind, by their message bytes: most sockets do
        # not change between ticks, and a dict lookup is cheaper than parsing them again.
        self._rows: dict[tuple[int, int, int], dict[bytes, DiagRow]] = {}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DiagSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, family: int, states: int, ext: int) -> int:
        self._seq += 1
        sockid = bytes(48)
        body = _REQ.pack(family, socket.IPPROTO_TCP, ext, states) + sockid
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)
        self.sock.sendto(header + body, (0, 0))
        return self._seq

    def dump(self, family: int, states: int, *, meminfo: bool = False, reuse: bool = True) -> Iterator[DiagRow]:
        """Yield one DiagRow per socket of `family` in any of the `states` bits.

        reuse: keep this dump's rows (by message bytes) to reuse in the next one: right for
        the per-tick dump, a waste of memory for the occasional dump of every child."""
        ext = (1 << (INET_DIAG_SKMEMINFO - 1)) if meminfo else 0
        seq = self._request(family, states, ext)
        buf = self._buf
        view = memoryview(buf)
        unpack_hdr = _NLMSGHDR.unpack_from
        unpack_head = _MSG_HEAD.unpack_from
        unpack_ports = _PORTS.unpack_from
        unpack_tail = _TAIL.unpack_from
        unpack_cookie = _COOKIE.unpack_from
        unpack_rta = _RTA.unpack_from
        unpack_u32 = _U32.unpack_from
        fmt = format_addr
        addr_len = 4 if family == socket.AF_INET else 16
        kind = (family, states, ext)
        known = self._rows.get(kind, {})
        seen: dict[bytes, DiagRow] = {}
        while True:
            n = self.sock.recv_into(buf)
            off = 0
            while off + 16 <= n:
                length, mtype, _flags, mseq, _pid = unpack_hdr(buf, off)
                if length < 16 or off + length > n:
                    raise DiagError(errno.EPROTO, "truncated netlink message")
                if mseq != seq:
                    off += (length + 3) & ~3
                    continue
                if mtype == NLMSG_DONE:
                    if reuse:
                        self._rows[kind] = seen
                    return
                if mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", buf, off + 16)
                    if err == 0:
                        off += (length + 3) & ~3
                        continue
                    raise DiagError(-err, f"sock_diag: {os.strerror(-err)}")
                p = off + 16
                body = bytes(view[p : off + length]) if reuse else b""
                row = known.get(body) if reuse else None
                if row is not None:
                    seen[body] = row
                    yield row
                    off += (length + 3) & ~3
                    continue
                fam, state, _timer, retrans = unpack_head(buf, p)
                sport, dport = unpack_ports(buf, p + 4)
                src = bytes(view[p + 8 : p + 8 + addr_len])
                dst = bytes(view[p + 24 : p + 24 + addr_len])
                (bound_if,) = unpack_u32(buf, p + 40)
                (cookie,) = unpack_cookie(buf, p + 44)
                _expires, rqueue, wqueue, uid, inode = unpack_tail(buf, p + 52)
                drops = -1
                v6only = -1
                if ext:
                    a = p + _MSG_LEN
                    end = off + length
                    while a + 4 <= end:
                        rlen, rtype = unpack_rta(buf, a)
                        if rlen < 4:
                            break
                        if rtype == INET_DIAG_SKV6ONLY and rlen >= 5:
                            v6only = buf[a + 4]  # comes before SKMEMINFO in the message
                        elif rtype == INET_DIAG_SKMEMINFO and rlen >= 4 + 4 * (SK_MEMINFO_DROPS + 1):
                            (drops,) = unpack_u32(buf, a + 4 + 4 * SK_MEMINFO_DROPS)
                            break
                        a += (rlen + 3) & ~3
                row = DiagRow(
                    fam,
                    state,
                    fmt(fam, src),
                    sport,
                    fmt(fam, dst),
                    dport,
                    cookie,
                    rqueue,
                    wqueue,
                    uid,
                    inode,
                    drops,
                    retrans,
                    bound_if,
                    v6only,
                )
                if reuse:
                    seen[body] = row
                yield row
                off += (length + 3) & ~3

    def dump_both(self, states: int, *, meminfo: bool = False, reuse: bool = True) -> list[DiagRow]:
        rows = list(self.dump(socket.AF_INET, states, meminfo=meminfo, reuse=reuse))
        try:
            rows.extend(self.dump(socket.AF_INET6, states, meminfo=meminfo, reuse=reuse))
        except DiagError as exc:
            # A kernel without IPv6 answers ENOENT for the AF_INET6 table.
            if exc.errno not in (errno.ENOENT, errno.EAFNOSUPPORT):
                raise
        return rows
