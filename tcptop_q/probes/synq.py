"""Each listener's SYN queue from the kernel's own link request -> listener: a BPF tcp iterator.

sock_diag lists request sockets (NEW_SYN_RECV) by address only, so in a SO_REUSEPORT group it
cannot say which member a request waits on, and no tracepoint fires when one is created. The
request itself knows (`request_sock.__req_common.skc_listener`, rsk_listener), and so does
the listener (`inet_connection_sock.icsk_accept_queue.qlen`). The program in synq.bpf.c,
attached as a tcp iterator, reads both on demand; docs/ARCHITECTURE.md "Where each number
comes from".

An iterator fd walks the sockets of the netns its creating thread is in (bpf_iter_init_seq_net
takes current's netns), so `walk()` is called inside each netns, on the sampling thread
(KernelReader.run_in). It walks the kernel's global hash tables filtered by netns: its cost is
all TCP sockets of the host per netns walked, so the sampler walks only namespaces where
several listeners share an address. The iterator is a program plus a link (no map);
`close()` closes both, and nothing of it stays in the kernel.
"""

from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .btf import Btf, BtfError
from .diag import format_addr
from .loader import COMPILE_LOCK
from .plan import one_line

SYNQ_C = Path(__file__).with_name("synq.bpf.c")
PROG_NAME = "bpf_iter__tcp"  # bcc finds the iterator target from this name (bpf_iter_tcp)
KERNEL_NAME = "tcp"  # what bpftool shows for it: bcc strips "bpf_iter__", so no tq_ prefix
HOOK = "iter:tcp"
METRIC = "syn_queue_members"  # the key in hooks: SO_REUSEPORT members' SYN queue by the kernel's link

LISTEN, SYN_RECV, NEW_SYN_RECV = 10, 3, 12

# In the snapshot's sources.notes (with the reason after ": ") on a tick where some address has
# several listeners and the iterator did not give their SYN queues.
BY_ADDRESS_NOTE = ("syn_queue of SO_REUSEPORT members counted by address (each group's SYN queue and "
                   "SYN_RECV children shown on one member): no tcp iterator")


class SynqError(Exception):
    """Why the iterator cannot run, phrased for a note."""


def offsets(btf: Btf) -> dict[str, int]:
    """The -D offsets of synq.bpf.c, from BTF (SynqError if the kernel lacks one)."""
    try:
        if not btf.has_struct("bpf_iter__tcp"):
            raise SynqError("kernel has no tcp BPF iterator (struct bpf_iter__tcp not in BTF; needs >= 5.9)")
        out = {
            "TQ_SQ_OFF_STATE": btf.field("sock_common", "skc_state").offset,
            "TQ_SQ_OFF_COOKIE": btf.field("sock_common", "skc_cookie").offset,
            "TQ_SQ_OFF_QLEN": btf.field("inet_connection_sock", "icsk_accept_queue.qlen").offset,
            "TQ_SQ_OFF_LISTENER": btf.field("request_sock", "__req_common.skc_listener").offset,
            "TQ_SQ_OFF_FAMILY": btf.field("sock_common", "skc_family").offset,
            "TQ_SQ_OFF_DPORT": btf.field("sock_common", "skc_dport").offset,
            "TQ_SQ_OFF_DADDR": btf.field("sock_common", "skc_daddr").offset,
            "TQ_SQ_OFF_V6_DADDR": btf.field("sock_common", "skc_v6_daddr").offset,
        }
    except BtfError as exc:
        raise SynqError(f"tcp iterator: {exc}") from None
    try:
        out["TQ_SQ_OFF_FASTOPEN_RSK"] = btf.field("tcp_sock", "fastopen_rsk").offset
    except BtfError:
        out["TQ_SQ_OFF_FASTOPEN_RSK"] = -1  # no Fast Open children counted per member
    return out


def program_text(defines: dict[str, int] | None = None) -> str:
    head = "".join(f"#define {k} {v}\n" for k, v in (defines or {}).items())
    return head + layout.synq_c_header() + SYNQ_C.read_text()


@dataclass
class Walk:
    """One netns, one walk. Per listener cookie: `qlen` (the kernel's icsk_accept_queue.qlen),
    `requests` (request sockets waiting on it: its SYN queue), `fastopen` (Fast Open children
    in SYN_RECV queued on it). `orphans`: requests whose listener was not among the LISTEN
    records of the walk (the listener closed or opened meanwhile). `peers`: (family, raddr,
    rport) of each request and Fast Open child -> its listener's cookie (their sock_diag rows
    share the member's local address: the peer tells them apart)."""

    qlen: dict[int, int] = field(default_factory=dict)
    requests: dict[int, int] = field(default_factory=dict)
    fastopen: dict[int, int] = field(default_factory=dict)
    orphans: int = 0
    peers: dict[tuple[int, str, int], int] = field(default_factory=dict)


def parse(data: bytes) -> Walk:
    w = Walk()
    size = layout.SYNQ_REC_SIZE
    usable = len(data) - len(data) % size
    for cookie, qlen, state, family, rport, raddr in layout.SYNQ_REC.iter_unpack(data[:usable]):
        if state == LISTEN:
            w.qlen[cookie] = qlen
            continue
        if state == NEW_SYN_RECV:
            w.requests[cookie] = w.requests.get(cookie, 0) + 1
        elif state == SYN_RECV:
            w.fastopen[cookie] = w.fastopen.get(cookie, 0) + 1
        else:
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            w.peers[(family, format_addr(family, raddr), socket.ntohs(rport))] = cookie
    for cookie in [c for c in w.requests if c not in w.qlen]:
        w.orphans += w.requests.pop(cookie)
    for cookie in [c for c in w.fastopen if c not in w.qlen]:
        w.orphans += w.fastopen.pop(cookie)
    return w


def _lib():
    from bcc import libbcc  # type: ignore[import-not-found]

    lib = libbcc.lib
    lib.bcc_iter_attach.restype = ctypes.c_int
    lib.bcc_iter_attach.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
    lib.bcc_iter_create.restype = ctypes.c_int
    lib.bcc_iter_create.argtypes = [ctypes.c_int]
    return lib


class SynqIter:
    """The compiled, attached iterator. Built on the loader thread; walk() from the sampling
    thread (inside the netns to walk); close() from anywhere, once nobody walks."""

    def __init__(self, bcc, btf: Btf) -> None:
        self.defines = offsets(btf)
        self._b = None
        self._link = -1
        try:
            with COMPILE_LOCK:  # never two clang compiles at once in one process
                b = bcc.BPF(text=program_text(self.defines), cflags=["-Wno-unused-value"])
        except Exception as exc:  # bcc raises bare Exception for compile/load errors
            raise SynqError(f"tcp iterator compile failed: {one_line(exc)}") from None
        self._b = b
        try:
            fn = b.load_func(PROG_NAME.encode(), bcc.BPF.TRACING)
            link = _lib().bcc_iter_attach(fn.fd, None, 0)
        except Exception as exc:
            self.close()
            raise SynqError(f"tcp iterator load failed: {one_line(exc)}") from None
        if link < 0:
            self.close()
            raise SynqError(f"tcp iterator attach refused: {os.strerror(-link)}")
        self._link = link

    def walk(self) -> Walk:
        """The sockets of the calling thread's netns. OSError if the kernel refuses."""
        if self._link < 0:
            raise OSError("tcp iterator closed")
        fd = _lib().bcc_iter_create(self._link)
        if fd < 0:
            raise OSError(-fd, f"tcp iterator: {os.strerror(-fd)}")
        chunks = []
        try:
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        return parse(b"".join(chunks))

    def close(self) -> None:
        link, self._link = self._link, -1
        if link >= 0:
            try:
                os.close(link)
            except OSError:
                pass
        b, self._b = self._b, None
        if b is not None:
            try:
                b.cleanup()
            except Exception:
                pass
