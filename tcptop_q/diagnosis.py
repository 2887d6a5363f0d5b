"""Plain-language diagnosis of one listener: pure, no textual, unit-tested.

Kernel facts this relies on (docs/ARCHITECTURE.md, "Where each number comes from"):
- sk_acceptq_is_full() tests ack_backlog > max_ack_backlog, so the accept queue
  holds backlog+1 children: 6 queued against backlog 5 is "full".
- the limit (idiag_wqueue) is min(listen() backlog, net.core.somaxconn).
- with the accept queue full, SYNs are dropped (sk_drops, ListenOverflows);
  with tcp_abort_on_overflow=1 the third ACK gets a RST instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tcptop_q.model import CloseWait, Listener, NetnsCounters

OK, INFO, WARN, CRIT = "ok", "info", "warn", "crit"
SEVERITY_ORDER = {CRIT: 0, WARN: 1, INFO: 2, OK: 3}
CLOSE_WAIT_PILE = 5  # this many CLOSE_WAIT children of one owner is a pile-up
CLOSE_WAIT_OLD_S = 30.0  # or any one older than this


@dataclass(frozen=True)
class Finding:
    severity: str  # ok | info | warn | crit
    text: str


ACCEPT_WAIT_WARN_S = 0.1  # p99 time in the accept queue worth a warning


def _owner(listener: Listener) -> str:
    if listener.pid is None:
        return "the owning process (unknown: no permission to read its fds, or another netns)"
    comm = f" ({listener.comm})" if listener.comm else ""
    return f"pid {listener.pid}{comm}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def _accept_findings(listener: Listener, owner: str) -> list[Finding]:
    """Time spent waiting for accept(): it climbs long before the queue overflows."""
    out = []
    recent = listener.accept_wait_recent
    if recent is not None and recent.count and recent.p99_s is not None and recent.p99_s >= ACCEPT_WAIT_WARN_S:
        out.append(Finding(WARN, (
            f"connections wait {_seconds(recent.p99_s)} (p99) before {owner} accepts them "
            f"(p50 {_seconds(recent.p50_s or 0.0)}, {_plural(recent.count, 'accept')} in the last few seconds)"
        )))
    return out


def _syn_findings(
    listener: Listener, sysctls: Mapping[str, int], netns: NetnsCounters | None
) -> list[Finding]:
    """SYN-queue findings. TCPReqQFullDrop, TCPReqQFullDoCookies and SyncookiesSent count for the
    whole netns: they are pinned on this listener only when its own numbers show it (its SYN
    queue holds requests, or it retransmits SYN-ACKs); otherwise they are stated as the netns'."""
    max_syn = sysctls.get("tcp_max_syn_backlog")
    cookies = sysctls.get("tcp_syncookies")
    rates = netns.rates if netns is not None else {}
    reqq_drop = rates.get("TCPReqQFullDrop", 0.0)
    reqq_cookies = rates.get("TCPReqQFullDoCookies", 0.0) + rates.get("SyncookiesSent", 0.0)
    depth, limit = listener.syn_queue, listener.backlog
    # inet_csk_reqsk_queue_is_full(): more requests than the listen backlog (kernels differ
    # on > vs >= at the limit, docs/COMPATIBILITY.md); without syncookies tcp_max_syn_backlog
    # caps it too.
    syn_full = depth > limit or (max_syn is not None and depth >= max_syn)
    own = syn_full or depth > 0 or bool(listener.synack_retrans_rate)
    where = f"SYN queue {depth}/{limit}" + (f" (tcp_max_syn_backlog {max_syn})" if max_syn else "")
    if own and (syn_full or reqq_drop > 0 or reqq_cookies > 0):
        if cookies == 0:
            return [
                Finding(
                    CRIT,
                    (
                        f"{where} full and tcp_syncookies=0: new SYNs are dropped "
                        f"(netns TCPReqQFullDrop {reqq_drop:.1f}/s): a SYN flood or clients that never "
                        "complete the handshake"
                    ),
                )
            ]
        return [
            Finding(
                WARN,
                (
                    f"{where}: the kernel is answering with syncookies (netns {reqq_cookies:.1f}/s, "
                    f"tcp_syncookies={cookies}): a SYN flood or a slow handshake path"
                ),
            )
        ]
    if reqq_drop > 0 or reqq_cookies > 0:
        what = []
        if reqq_cookies > 0:
            what.append(f"syncookies {reqq_cookies:.1f}/s")
        if reqq_drop > 0:
            what.append(f"SYN-queue-full drops {reqq_drop:.1f}/s")
        return [
            Finding(
                INFO,
                (
                    f"this netns sends {' and '.join(what)} (netns-wide counters), not for this listener: "
                    f"its SYN queue is empty ({depth}/{limit}) and it retransmits no SYN-ACKs"
                ),
            )
        ]
    return []


def _close_wait_findings(
    listener: Listener, close_wait: Sequence[CloseWait], owner: str
) -> list[Finding]:
    """A CLOSE_WAIT child with inode 0 was never accept()ed: it closed while still in the accept
    queue (the peer gave up waiting), which is the accept-queue story, not a close() leak. Only
    accepted ones (an inode, held by an fd) can be leaked by the process."""
    mine = [cw for cw in close_wait if cw.listener == listener.key]
    # Still in the accept queue: no inode yet (no fd), or the accept hook timed it (queued_s).
    queued = [cw for cw in mine if cw.inode == 0 or cw.queued_s is not None]
    held = [cw for cw in mine if not (cw.inode == 0 or cw.queued_s is not None)]
    findings: list[Finding] = []
    if queued:
        waited = [cw.queued_s for cw in queued if cw.queued_s is not None]
        oldest_q = f", oldest {_seconds(max(waited))} in the queue" if waited else ""
        findings.append(
            Finding(
                WARN if len(queued) >= CLOSE_WAIT_PILE else INFO,
                (
                    f"{len(queued)} {'child' if len(queued) == 1 else 'children'} closed by the peer before {owner} accepted them "
                    f"(CLOSE_WAIT, still in the accept queue{oldest_q}): accept() is behind, the clients gave up "
                    "waiting; not a close() leak"
                ),
            )
        )
    n_cw = len(held) if mine else int(listener.children.get("CLOSE_WAIT", 0))
    if not n_cw:
        return findings
    ages = [cw.age_s for cw in held if cw.age_s is not None]
    oldest = max(ages) if ages else None
    unread = sum(cw.recv_q for cw in held)
    pids = sorted({(cw.pid, cw.comm) for cw in held if cw.pid is not None}, key=lambda p: p[0])
    who = ", ".join(f"pid {pid}" + (f" ({comm})" if comm else "") for pid, comm in pids) if pids else owner
    if n_cw >= CLOSE_WAIT_PILE or (oldest is not None and oldest >= CLOSE_WAIT_OLD_S):
        detail = []
        if oldest is not None:
            detail.append(f"oldest {oldest:.0f}s")
        if unread:
            detail.append(f"{unread} bytes never read")
        extra = f" ({', '.join(detail)})" if detail else ""
        findings.append(
            Finding(
                WARN,
                (
                    f"{_plural(n_cw, 'connection')} in CLOSE_WAIT{extra}: the peers closed, {who} never "
                    "calls close() on them (a leaked fd per connection)"
                ),
            )
        )
    else:
        findings.append(
            Finding(INFO, f"{_plural(n_cw, 'connection')} in CLOSE_WAIT, waiting for {who} to close()")
        )
    return findings


def diagnose(
    listener: Listener,
    *,
    sysctls: Mapping[str, int] | None = None,
    netns: NetnsCounters | None = None,
    close_wait: Sequence[CloseWait] = (),
    group: Sequence[Listener] = (),
) -> list[Finding]:
    """Findings, worst first; a healthy listener gets exactly one OK finding. `group`: the
    members of its SO_REUSEPORT group (tcptop_q/reuseport.py), itself included."""
    sysctls = sysctls or {}
    findings: list[Finding] = []
    imbalanced = reuseport_finding(group)
    if imbalanced is not None:
        findings.append(imbalanced)
    depth, limit = listener.accept_queue, listener.backlog
    somaxconn = sysctls.get("somaxconn")
    drops_rising = listener.drop_rate > 0 or bool(listener.overflow_rate)
    owner = _owner(listener)

    if somaxconn is not None and limit >= somaxconn:
        limit_text = f"net.core.somaxconn {somaxconn} is the limit (listen() asked for {limit} or more)"
    elif somaxconn is not None:
        limit_text = f"backlog {limit} from listen() is the limit (somaxconn {somaxconn})"
    else:
        limit_text = f"backlog {limit} is the limit"

    full = depth > limit  # sk_acceptq_is_full
    if full:
        head = f"accept queue full {depth}/{limit} (the kernel holds backlog+1)"
        if drops_rising:
            findings.append(
                Finding(
                    CRIT,
                    (
                        f"{head} and drops rising ({_rate(listener.drop_rate)}): {owner} is not calling "
                        f"accept() fast enough; {limit_text}"
                    ),
                )
            )
        else:
            findings.append(
                Finding(
                    WARN,
                    (
                        f"{head}, no new drops this interval: {owner} is not calling accept(); the next "
                        f"connection will be dropped; {limit_text}"
                    ),
                )
            )
        if sysctls.get("tcp_abort_on_overflow"):
            findings.append(Finding(INFO, "tcp_abort_on_overflow=1: clients get a RST instead of a retry"))
    elif depth and depth >= limit:
        findings.append(
            Finding(
                WARN,
                (
                    f"accept queue at its limit {depth}/{limit}: one more connection fits; {owner} is "
                    f"falling behind; {limit_text}"
                ),
            )
        )
    elif drops_rising:
        peak = listener.peak_accept_queue
        if peak is not None and peak > limit:
            findings.append(
                Finding(
                    CRIT,
                    (
                        f"bursts fill the accept queue between samples (peak {peak}/{limit}) and drops rise "
                        f"({_rate(listener.drop_rate)}): {owner} accepts too slowly for the bursts; {limit_text}"
                    ),
                )
            )
        else:
            findings.append(
                Finding(
                    WARN,
                    (
                        f"drops rising ({_rate(listener.drop_rate)}) with the accept queue at {depth}/{limit}: "
                        f"bursts between samples, a SYN-queue overflow, or filter drops; see the netns counters"
                    ),
                )
            )

    findings.extend(_syn_findings(listener, sysctls, netns))
    if listener.synack_retrans_rate:
        findings.append(
            Finding(
                INFO,
                (
                    f"SYN-ACK retransmits {_rate(listener.synack_retrans_rate)}: clients do not complete the "
                    "handshake (lost ACKs, or the accept queue is full and the kernel ignores their ACK)"
                ),
            )
        )

    findings.extend(_accept_findings(listener, owner))
    findings.extend(_close_wait_findings(listener, close_wait, owner))

    if not any(f.severity in (CRIT, WARN) for f in findings):
        drops = "no drops this interval" if not drops_rising else f"drops {_rate(listener.drop_rate)}"
        findings.insert(
            0,
            Finding(OK, (f"healthy: accept queue {depth}/{limit}, SYN queue {listener.syn_queue}, {drops}")),
        )
    findings.sort(key=lambda f: SEVERITY_ORDER[f.severity])
    return findings


def severity_rank(listener: Listener, close_wait_growing: bool = False) -> int:
    """What is wrong now, cheaply (every listener, every tick): 0 drops, overflows or a growing
    CLOSE_WAIT pile; 1 a full or at-limit accept queue, a standing CLOSE_WAIT pile, SYN-ACK
    retransmits; 2 the rest. The main table's default order (then overflow rate)."""
    if listener.overflow_rate or listener.drop_rate > 0:
        return 0
    cw = int(listener.children.get("CLOSE_WAIT", 0))
    if close_wait_growing and cw >= CLOSE_WAIT_PILE:
        return 0
    if listener.accept_queue and listener.accept_queue >= listener.backlog:
        return 1
    if cw >= CLOSE_WAIT_PILE or listener.synack_retrans_rate:
        return 1
    return 2


def next_commands(listener: Listener) -> list[tuple[str, str]]:
    """(what, shell command) an SRE runs next for this listener, inside its netns: the
    kernel's own view of the queue, the CLOSE_WAIT sockets and the netns counters."""
    port = listener.lport
    enter = f"nsenter -t {listener.pid} -n " if listener.pid is not None else ""
    where = "" if enter else f"  # in netns {listener.netns} (owner unknown: enter it yourself)"
    return [
        ("the listener, its queue and drops", f"{enter}ss -ltnpm 'sport = :{port}'{where}"),
        ("its CLOSE_WAIT sockets", f"{enter}ss -tanpe state close-wait 'sport = :{port}'{where}"),
        ("the netns counters", f"{enter}nstat -az TcpExtListenOverflows TcpExtListenDrops "
                               f"TcpExtTCPReqQFullDoCookies TcpExtTCPReqQFullDrop{where}"),
    ]


REUSEPORT_IMBALANCE = 2.0  # one member queues twice the group's mean or more


def reuseport_finding(members: Sequence[Listener]) -> Finding | None:
    """An imbalanced SO_REUSEPORT group: the kernel spreads connections by hash, not by load,
    so members that do not accept() fill up and drop their share while another takes the rest."""
    from tcptop_q.reuseport import ReuseportGroup, is_full

    if len(members) < 2 or members[0].reuseport_group is None:
        return None
    group = ReuseportGroup(members[0].reuseport_group, tuple(members))
    full = group.full
    busiest = group.busiest
    ratio = group.queued_imbalance
    if not full and (ratio is None or ratio < REUSEPORT_IMBALANCE):
        return None
    parts = []
    if busiest is not None and ratio is not None and ratio >= REUSEPORT_IMBALANCE:
        top, share = busiest
        who = f"pid {top.pid}" if top.pid is not None else f"cookie {top.key.cookie}"
        parts.append(f"member {who} takes {share * 100:.0f} % of connections")
    if full:
        parts.append(f"{full} members' queues are full" if full != 1 else "1 member's queue is full")
    drops = any(m.drop_rate > 0 for m in members if is_full(m))
    text = (
        f"SO_REUSEPORT group of {len(members)} on {members[0].key.label()}: {', '.join(parts)}: the kernel "
        "picks a member by hash, not by load; a member that does not accept() drops its share"
    )
    return Finding(CRIT if drops else WARN, text)
