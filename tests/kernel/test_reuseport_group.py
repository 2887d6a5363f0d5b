"""SO_REUSEPORT groups against the real kernel, in the test's own netns: each member's queue and
drops equal what ss says for that member, the group and its fill imbalance in the JSON, and the
grouping rule (family, IPV6_V6ONLY) matches where the kernel actually sends connections."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

PORT = 8094

# argv[1]: [[family, addr, port, v6only, backlog, accept], ...]; every socket sets SO_REUSEPORT.
# argv[2] "hold": accepting members keep every child they accept (ESTABLISHED until the client
# closes); "close": they close it at once. Prints the members' socket inodes when all listen,
# then on each stdin line the number accepted so far.
SERVER = """
import json, os, signal, socket, sys, threading
signal.alarm(120)
socks, held, lock = [], [], threading.Lock()
hold = sys.argv[2] == "hold"
for family, addr, port, v6only, backlog, accept in json.loads(sys.argv[1]):
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == 6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind((addr, port))
    s.listen(backlog)
    socks.append(s)
    if accept:
        def loop(s=s):
            while True:
                c, _ = s.accept()
                with lock:
                    held.append(c)
                if not hold:
                    c.close()
        threading.Thread(target=loop, daemon=True).start()
print(json.dumps([os.fstat(s.fileno()).st_ino for s in socks]), flush=True)
for _line in sys.stdin:
    with lock:
        print(len(held), flush=True)
"""


# Sequential non-blocking connects: one that does not complete in 0.3 s (its SYN was dropped by
# a full member) is closed before its SYN is retried, so the counts stop moving once this ends.
CLIENTS = """
import json, select, socket, sys, time
family, addr, port, count = json.loads(sys.argv[1])
kept, done = [], 0
for _ in range(count):
    c = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET)
    c.setblocking(False)
    c.connect_ex((addr, port))
    _r, w, _x = select.select([], [c], [], 0.3)
    if w and c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
        kept.append(c)
        done += 1
    else:
        c.close()
print(done, flush=True)
sys.stdin.read()
"""


def start(labns, script: str, arg, *extra: str) -> subprocess.Popen:
    return labns.spawn([sys.executable, "-c", script, json.dumps(arg), *extra], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)


def start_server(labns, spec, mode: str) -> tuple[subprocess.Popen, list[int]]:
    """SERVER with members `spec` ("hold" or "close"), once every member listens: it and their inodes."""
    server = start(labns, SERVER, spec, mode)
    inodes = json.loads(server.stdout.readline())
    assert len(inodes) == len(spec)
    return server, inodes


def _stop(*procs) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            proc.terminate()
            proc.wait(timeout=10)


def ss_members(labns, port: int) -> dict[int, dict[str, int]]:
    """cookie -> {rqueue, wqueue, drops} of every listener on `port`, as ss -ltnme prints them."""
    out = labns.run(["ss", "-ltnmeH", f"sport = :{port}"]).stdout
    members = {}
    for line in re.split(r"\n(?=LISTEN)", out.strip()):  # skmem comes on a line of its own
        if not line:
            continue
        fields = line.split()
        cookie = int(re.search(r"\bsk:([0-9a-f]+)", line).group(1), 16)
        drops = int(re.search(r"skmem:\([^)]*\bd(\d+)\)", line).group(1))
        members[cookie] = {"rqueue": int(fields[1]), "wqueue": int(fields[2]), "drops": drops}
    return members


def test_four_members_one_accepting(labns):
    from tcptop_q.model import snapshot_to_json
    from tcptop_q.sampler import Sampler

    spec = [[4, "127.0.0.1", PORT, 0, 2, i == 0] for i in range(4)]
    server, _inodes = start_server(labns, spec, "close")
    clients = None
    sampler = Sampler(netns=labns.inode, blocking_owners=True)
    try:
        clients = start(labns, CLIENTS, [4, "127.0.0.1", PORT, 40])
        connected = int(clients.stdout.readline())
        assert 0 < connected < 40
        deadline = time.monotonic() + 20
        while True:  # at rest: ss the same before and after the sample
            before = ss_members(labns, PORT)
            snap = sampler.sample(0.2)
            if before == ss_members(labns, PORT) or time.monotonic() > deadline:
                break
        assert len(before) == 4
        got = {x.key.cookie: x for x in snap.listeners if x.lport == PORT}
        assert set(got) == set(before)
        for cookie, want in before.items():
            lst = got[cookie]
            assert {"rqueue": lst.accept_queue, "wqueue": lst.backlog, "drops": lst.drops} == want, cookie
        # The scenario did what it says: one member drains, the others filled and dropped.
        assert sorted(m["rqueue"] for m in before.values())[0] == 0
        assert any(m["rqueue"] == 3 and m["drops"] > 0 for m in before.values())

        groups = {x.reuseport_group for x in got.values()}
        assert len(groups) == 1 and None not in groups
        out = snapshot_to_json(snap)
        (group,) = [g for g in out["reuseport_groups"] if g["lport"] == PORT]
        assert group["members"] == sorted(before)
        fills = [m["rqueue"] / (m["wqueue"] + 1) for m in before.values()]
        assert group["fill_imbalance"] == max(fills) / (sum(fills) / 4)
        assert group["full_members"] == sum(1 for m in before.values() if m["rqueue"] > m["wqueue"])
        assert group["queued_imbalance"] is None  # no BPF in this test: queued unknown, never 0
    finally:
        sampler.close()
        _stop(clients, server)


def test_dual_stack_and_v6only_are_separate_groups(labns):
    """0.0.0.0:P + [::]:P (both SO_REUSEPORT, the [::] one not v6only): two families, no group.
    Three [::]:Q members, one of them IPV6_V6ONLY: the kernel's group is the other two, and IPv6
    connections all land on one group (either side), never spread over all three."""
    from tcptop_q.sampler import Sampler

    q = PORT + 1
    spec = [[4, "0.0.0.0", PORT, 0, 64, False], [6, "::", PORT, 0, 64, False],
            [6, "::", q, 0, 64, False], [6, "::", q, 0, 64, False], [6, "::", q, 1, 64, False]]
    server, _inodes = start_server(labns, spec, "close")
    clients = None
    sampler = Sampler(netns=labns.inode, blocking_owners=True)
    try:
        snap = sampler.sample(0.2)
        pair = [x for x in snap.listeners if x.lport == PORT]
        assert sorted(x.family for x in pair) == ["ipv4", "ipv6"]
        assert [x.reuseport_group for x in pair] == [None, None]
        members = [x for x in snap.listeners if x.lport == q]
        grouped = [x for x in members if x.reuseport_group is not None]
        assert len(members) == 3 and len(grouped) == 2 and len({x.reuseport_group for x in grouped}) == 1

        clients = start(labns, CLIENTS, [6, "::1", q, 30])
        assert int(clients.stdout.readline()) == 30
        got = ss_members(labns, q)
        busy = {c for c, m in got.items() if m["rqueue"]}
        assert sum(m["rqueue"] for m in got.values()) == 30
        assert busy <= {x.key.cookie for x in grouped} or busy == {x.key.cookie for x in members if x not in grouped}
    finally:
        sampler.close()
        _stop(clients, server)



def ss_server_children(labns, port: int) -> dict[str, int]:
    out = labns.run(["ss", "-tanH", "state", "established", "state", "close-wait", f"sport = :{port}"]).stdout
    states: dict[str, int] = {}
    for line in out.splitlines():
        if line.strip():
            name = {"ESTAB": "ESTABLISHED", "CLOSE-WAIT": "CLOSE_WAIT"}[line.split()[0]]
            states[name] = states.get(name, 0) + 1
    return states


@pytest.mark.parametrize("group_first", [True, False], ids=["group-before-live", "group-after-live"])
def test_four_members_one_accepting_per_member_counts(labns, bpf, group_first):
    """Each member's accept_queue, drops, queued, accepted and children are the kernel's for that
    member, with the group opened before the probes went live and after (then the kernel has no
    cookie for the members when the probes first see them). A non-accepting member's children are
    its accept queue; the accepting member's are the ones it accepted (held open) plus its queue.
    Then every client closes: each member's children move to CLOSE_WAIT, between full dumps too."""
    from tcptop_q.sampler import Sampler
    from tcptop_q.source import load_bpf

    port = PORT + 2
    spec = [[4, "127.0.0.1", port, 0, 2, i == 0] for i in range(4)]
    server = clients = None
    probes, error = load_bpf(None, labns.inode)
    assert probes is not None, error
    sampler = Sampler(bpf=probes, netns=labns.inode, blocking_owners=True, children_every=3600)
    try:
        if group_first:
            server, inodes = start_server(labns, spec, "hold")
        probes.start()
        assert probes.wait_ready(90), probes.error
        if not group_first:
            server, inodes = start_server(labns, spec, "hold")
        sampler.sample(0.2, children=True)  # the baseline tick (overflows, rates)

        def held() -> int:
            server.stdin.write("n\n")
            server.stdin.flush()
            return int(server.stdout.readline())

        clients = start(labns, CLIENTS, [4, "127.0.0.1", port, 40])
        assert 0 < int(clients.stdout.readline()) < 40

        def at_rest(children: bool):
            deadline = time.monotonic() + 20
            while True:
                before, n = ss_members(labns, port), held()
                kids = ss_server_children(labns, port)
                snap = sampler.sample(0.2, children=children)
                if (before, n, kids) == (ss_members(labns, port), held(), ss_server_children(labns, port)):
                    return snap, before, n, kids
                assert time.monotonic() < deadline, "the group never came to rest"

        snap, ss_now, accepted, kids = at_rest(children=True)
        by_inode = {x.inode: x for x in snap.listeners if x.lport == port}
        assert set(by_inode) == set(inodes)
        assert accepted > 0 and kids == {"ESTABLISHED": accepted + sum(m["rqueue"] for m in ss_now.values())}
        # The accepting thread entered accept() before the probes attached when the group came
        # first: a kretprobe only catches calls that begin after it, so that one accept() is not
        # seen there (and the plan says so in its notes); the syscall exits see it.
        unseen = 1 if group_first and probes.hooks["accepted"].startswith("kretprobe:") else 0
        if unseen:
            assert any("already waiting in inet_csk_accept" in n for n in probes.notes)
        for i, ino in enumerate(inodes):
            lst = by_inode[ino]
            want = ss_now[lst.key.cookie]
            mine = accepted if i == 0 else 0
            assert (lst.accept_queue, lst.drops) == (want["rqueue"], want["drops"]), i
            assert (lst.queued, lst.accepted) == (want["rqueue"] + mine, mine - unseen if i == 0 else 0), i
            assert lst.children["ESTABLISHED"] == want["rqueue"] + mine, (i, lst.children)
        assert any(by_inode[ino].accept_queue == 3 for ino in inodes[1:])  # members filled up

        clients.stdin.close()  # every client closes: the server's children go to CLOSE_WAIT
        clients.wait(timeout=10)
        deadline = time.monotonic() + 20
        while ss_server_children(labns, port).get("ESTABLISHED"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        snap, ss_now, accepted, kids = at_rest(children=False)
        assert snap.connections is None  # between full dumps: the kernel's deltas per member
        assert kids == {"CLOSE_WAIT": accepted + sum(m["rqueue"] for m in ss_now.values())}
        by_inode = {x.inode: x for x in snap.listeners if x.lport == port}
        for i, ino in enumerate(inodes):
            lst = by_inode[ino]
            mine = accepted if i == 0 else 0
            assert (lst.children["ESTABLISHED"], lst.children["CLOSE_WAIT"]) == (
                0, ss_now[lst.key.cookie]["rqueue"] + mine), (i, lst.children)
    finally:
        sampler.close()
        probes.close()
        _stop(clients, server)
