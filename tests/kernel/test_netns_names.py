"""Netns names on the real kernel: ip netns, an unnamed netns, every runtime's state layout
through real cgroups and real network namespaces, and a real podman container.

Docker, containerd and CRI-O daemons cannot run on this machine kind (no engine, no
kubelet): their state is written here as those runtimes write it, into a temp root the
naming module is pointed at (probes/names.py StateRoots), while the processes, their
network namespaces and their cgroups are real, so pid -> netns -> cgroup -> state -> name
runs for real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tcptop_q import model
from tcptop_q.cli import format_batch
from tcptop_q.probes.names import NetnsNamer, StateRoots
from tcptop_q.sampler import Sampler
from tests.conftest import need, tcpq

SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(7)
print("ready", flush=True); time.sleep(120)
"""
HOSTILE = "\x1b]0;pwn\x07\x1b[2J\u202egnp.exe\x9b" + "A" * 4096


def _wait(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _cgroup2_root() -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype, *_ = line.split()
            if fstype == "cgroup2":
                return mnt
    return None


class Procs:
    """Processes this test starts (each in a netns of its own, or joined to another), their
    cgroups, all removed afterwards: processes by pid, then the cgroup directories."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.cgroups: list[Path] = []
        root = _cgroup2_root()
        need(root is not None, "needs a cgroup2 hierarchy (mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified)")
        self.base = Path(str(root)) / f"tq-names-{os.getpid()}"

    def server(self, port: int, join: int | None = None) -> subprocess.Popen:
        """A listener on 0.0.0.0:port in a new netns (unshare -n), or in the netns of pid `join`."""
        argv = ["unshare", "-n"] if join is None else ["nsenter", f"--net=/proc/{join}/ns/net"]
        proc = subprocess.Popen([*argv, sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def sleeper(self) -> subprocess.Popen:
        proc = subprocess.Popen(["unshare", "-n", "sleep", "120"])
        self.procs.append(proc)
        _wait(lambda: _netns(proc.pid) != _netns(os.getpid()), what="unshare -n")
        return proc

    def into_cgroup(self, proc: subprocess.Popen, rel: str) -> None:
        path = self.base / rel
        for parent in reversed([path, *path.parents]):
            if parent == self.base.parent or self.base not in (parent, *parent.parents):
                continue
            if not parent.exists():
                parent.mkdir()
                self.cgroups.append(parent)
        (path / "cgroup.procs").write_text(str(proc.pid))
        assert f"::/{path.relative_to(self.base.parent)}" in Path(f"/proc/{proc.pid}/cgroup").read_text()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        for path in sorted(self.cgroups, key=lambda p: -len(p.parts)):
            _wait(lambda p=path: _rmdir(p), what=f"rmdir {path}")


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
        return True
    except FileNotFoundError:
        return True
    except OSError:  # EBUSY until the killed process has left
        return False


def _netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


@pytest.fixture
def procs(root):
    p = Procs()
    try:
        yield p
    finally:
        p.close()
    assert not p.base.exists()


def _sample(roots: StateRoots | None = None) -> model.Snapshot:
    """Two ticks of the real sampler over every netns, naming from `roots`."""
    sampler = Sampler(all_netns=True, blocking_owners=True)
    try:
        if roots is not None:
            sampler.namer = NetnsNamer(roots)
        sampler.sample(0.1)
        return sampler.sample(0.1)
    finally:
        sampler.close()


def _entry(snap: model.Snapshot, inode: int) -> model.NetnsCounters:
    return next(ns for ns in snap.netns if ns.inode == inode)


def _listener_json(snap: model.Snapshot, inode: int, port: int) -> dict:
    out = model.snapshot_to_json(snap)
    return next(x for x in out["listeners"] if x["netns"] == inode and x["lport"] == port)


def _hex(n: int = 64) -> str:
    return (uuid.uuid4().hex * 2)[:n]


def _write(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# ---------------------------------------------------------------- ip netns, unnamed, host


def test_ip_netns_name_unnamed_netns_and_host(labns, procs):
    sleeper = procs.sleeper()  # a netns no /run/netns entry and no container names
    bare = _netns(sleeper.pid)
    once = tcpq("--once", "--json", "--no-bpf", "--interval", "0.1")
    assert once.returncode == 0, once.stderr
    out = json.loads(once.stdout)
    by_inode = {ns["inode"]: ns for ns in out["netns"]}
    assert os.stat(f"/run/netns/{labns.name}").st_ino == labns.inode
    assert (by_inode[labns.inode]["netns_name"], by_inode[labns.inode]["netns_source"]) == (labns.name, "ip-netns")
    assert (by_inode[bare]["netns_name"], by_inode[bare]["netns_source"]) == (None, None)
    # kthreadd (ppid 0) is a kernel thread: it lives in the init netns whatever else does.
    assert "PPid:\t0\n" in Path("/proc/2/status").read_text()
    host = _netns(2)
    assert (by_inode[host]["netns_name"], by_inode[host]["netns_source"]) == ("host", "init")


def test_listener_json_batch_and_netns_filter_by_name(labns):
    labns.serve(port=8097, backlog=5)
    once = tcpq("--once", "--json", "--no-bpf", "--interval", "0.1", "--netns", labns.name)
    assert once.returncode == 0, once.stderr
    out = json.loads(once.stdout)
    assert [ns["inode"] for ns in out["netns"]] == [labns.inode]  # the filter kept only that netns
    assert "127.0.0.1:8097" in labns.run(["ss", "-Hltn"]).stdout.split()
    (lst,) = [x for x in out["listeners"] if x["lport"] == 8097]
    assert (lst["netns"], lst["netns_name"], lst["netns_source"]) == (labns.inode, labns.name, "ip-netns")
    assert {x["netns"] for x in out["listeners"]} == {labns.inode}

    batch = tcpq("--batch", "-n", "1", "-d", "0.1", "--no-bpf", "--wide", "--netns", labns.name)
    assert batch.returncode == 0, batch.stderr
    row = next(line for line in batch.stdout.splitlines() if ":8097" in line)
    assert labns.name[:17] in row


def test_unknown_netns_name_or_inode_is_one_line_exit_2(root):
    for bad in ("no-such-netns-anywhere", "docker:ffffffffffff", "4000000000"):
        res = tcpq("--once", "--no-bpf", "--netns", bad, timeout=60)
        assert res.returncode == 2, (bad, res.stdout, res.stderr)
        assert res.stderr.count("\n") == 1 and "no such network namespace" in res.stderr, res.stderr
        assert res.stdout == ""
    res = tcpq("--once", "--no-bpf", "--netns", "a\x1bb", timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "\x1b" not in res.stderr


# ---------------------------------------------------------------- runtime state layouts


def test_docker_containerd_crio_nspawn_lxc_names_through_real_cgroups(procs, tmp_path):
    roots = StateRoots.under(str(tmp_path))
    port = 8300
    want: dict[int, tuple[str, str]] = {}

    # Docker, systemd cgroup driver: system.slice/docker-<id>.scope; Name in config.v2.json.
    did = _hex()
    p = procs.server(port)
    procs.into_cgroup(p, f"system.slice/docker-{did}.scope")
    _write(tmp_path / f"var/lib/docker/containers/{did}/config.v2.json",
           {"ID": did, "Name": "/web-7f9c", "Config": {"Labels": {"com.example": "x"}}})
    want[_netns(p.pid)] = (f"web-7f9c ({did[:12]})", "docker")

    # Docker, cgroupfs driver (v1 layout, seen on v2 too): /docker/<id>.
    did2 = _hex()
    p = procs.server(port)
    procs.into_cgroup(p, f"docker/{did2}")
    _write(tmp_path / f"var/lib/docker/containers/{did2}/config.v2.json", {"ID": did2, "Name": "/db"})
    want[_netns(p.pid)] = (f"db ({did2[:12]})", "docker")

    # containerd outside Kubernetes (nerdctl): its own namespace, the name in an annotation.
    nid = _hex()
    p = procs.server(port)
    procs.into_cgroup(p, f"system.slice/nerdctl-{nid}.scope")
    _write(tmp_path / f"run/containerd/io.containerd.runtime.v2.task/default/{nid}/config.json",
           {"ociVersion": "1.1.0", "annotations": {"nerdctl/name": "cache"}})
    want[_netns(p.pid)] = (f"cache ({nid[:12]})", "containerd")

    # Kubernetes on containerd (k8s.io namespace, systemd driver): a sandbox (pause) and an
    # app container sharing the pod's netns, each in its own cri-containerd scope.
    uid = str(uuid.uuid4())
    pod_slice = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid.replace("-", "_") + ".slice"
    sandbox_id, app_id = _hex(), _hex()
    pause = procs.server(port)
    procs.into_cgroup(pause, f"{pod_slice}/cri-containerd-{sandbox_id}.scope")
    app = procs.server(port + 1, join=pause.pid)
    procs.into_cgroup(app, f"{pod_slice}/cri-containerd-{app_id}.scope")
    task = tmp_path / "run/containerd/io.containerd.runtime.v2.task/k8s.io"
    _write(task / sandbox_id / "config.json", {"annotations": {
        "io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-name": "web-7f9c-5d8b",
        "io.kubernetes.cri.sandbox-namespace": "shop", "io.kubernetes.cri.sandbox-uid": uid}})
    _write(task / app_id / "config.json", {"annotations": {
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.container-name": "nginx",
        "io.kubernetes.cri.sandbox-name": "web-7f9c-5d8b", "io.kubernetes.cri.sandbox-namespace": "shop"}})
    k8s_ns = _netns(pause.pid)
    assert _netns(app.pid) == k8s_ns
    want[k8s_ns] = ("shop/web-7f9c-5d8b (nginx)", "k8s")

    # Kubernetes on CRI-O (cgroupfs driver: kubepods/besteffort/pod<uid>/crio-<id>.scope).
    uid2 = str(uuid.uuid4())
    cid = _hex()
    p = procs.server(port)
    procs.into_cgroup(p, f"kubepods/besteffort/pod{uid2}/crio-{cid}.scope")
    _write(tmp_path / f"run/containers/storage/overlay-containers/{cid}/userdata/config.json", {"annotations": {
        "io.kubernetes.pod.namespace": "kube-system", "io.kubernetes.pod.name": "coredns-abc12",
        "io.kubernetes.container.name": "coredns", "io.kubernetes.cri-o.ContainerType": "container"}})
    want[_netns(p.pid)] = ("kube-system/coredns-abc12 (coredns)", "k8s")

    # A pod whose runtime state is not there (or not readable): the pod UID from the cgroup path.
    uid3 = str(uuid.uuid4())
    p = procs.server(port)
    procs.into_cgroup(p, f"kubepods/burstable/pod{uid3}/{_hex()}")
    want[_netns(p.pid)] = (f"pod {uid3}", "cgroup")

    # A container id without state: runtime and short id, source "cgroup" (not a name).
    orphan = _hex()
    p = procs.server(port)
    procs.into_cgroup(p, f"system.slice/docker-{orphan}.scope")
    want[_netns(p.pid)] = (f"docker:{orphan[:12]}", "cgroup")

    # systemd-nspawn: machine.slice/machine-<escaped name>.scope, registered with machined.
    p = procs.server(port)
    procs.into_cgroup(p, "machine.slice/machine-tq\\x2dbox.scope")
    (tmp_path / "run/systemd/machines").mkdir(parents=True)
    (tmp_path / "run/systemd/machines/tq-box").write_text("NAME=tq-box\nSCOPE=machine-tq\\x2dbox.scope\nCLASS=container\n")
    want[_netns(p.pid)] = ("tq-box", "nspawn")

    # LXC 4+: lxc.payload.<name>.
    p = procs.server(port)
    procs.into_cgroup(p, "lxc.payload.tq-c1")
    want[_netns(p.pid)] = ("tq-c1", "lxc")

    snap = _sample(roots)
    for inode, (name, source) in want.items():
        ns = _entry(snap, inode)
        assert (ns.name, ns.name_source) == (name, source), inode
        lst = _listener_json(snap, inode, port)
        assert (lst["netns_name"], lst["netns_source"]) == (name, source)
    assert _listener_json(snap, k8s_ns, port + 1)["netns_name"] == "shop/web-7f9c-5d8b (nginx)"
    text = format_batch(snap, wide=True)
    assert any("shop/web-7f9c-5d8b (ngi" in line and f":{port + 1}" in line for line in text.splitlines())
    # the same netns, named before from the cache: a new process in it makes it look again
    namer = NetnsNamer(roots)
    from tcptop_q.probes.netns import discover

    refs = discover()
    assert namer.names({k8s_ns: refs[k8s_ns].pids})[k8s_ns].name == "shop/web-7f9c-5d8b (nginx)"


def test_netns_name_and_source_prefix_select_one_namespace(procs, tmp_path):
    """--netns NAME / SOURCE:PREFIX pick the right inode (names.match_netns over what was found)."""
    from tcptop_q.probes.names import match_netns

    roots = StateRoots.under(str(tmp_path))
    ids = [_hex(), _hex()]
    inodes = []
    for i, (cid, name) in enumerate(zip(ids, ("web-7f9c", "web-2"), strict=True)):
        p = procs.server(8400 + i)
        procs.into_cgroup(p, f"system.slice/docker-{cid}.scope")
        _write(tmp_path / f"var/lib/docker/containers/{cid}/config.v2.json", {"Name": f"/{name}"})
        inodes.append(_netns(p.pid))
    snap = _sample(roots)
    entries = [(ns.inode, ns.name, ns.name_source) for ns in snap.netns]
    assert match_netns("web-7f9c", entries) == [inodes[0]]
    assert match_netns(f"docker:{ids[1][:4]}", entries) == [inodes[1]]
    assert match_netns("docker:web-2", entries) == [inodes[1]]
    assert sorted(match_netns("docker:web", entries)) == sorted(inodes)  # ambiguous: the CLI says so
    assert match_netns("podman:web-2", entries) == []
    assert match_netns(str(inodes[0]), entries) == [inodes[0]]


# ---------------------------------------------------------------- hostile names


def test_hostile_names_stay_inert_in_json_batch_and_tui(procs, tmp_path):
    roots = StateRoots.under(str(tmp_path))
    did = _hex()
    p1 = procs.server(8500)
    procs.into_cgroup(p1, f"system.slice/docker-{did}.scope")
    _write(tmp_path / f"var/lib/docker/containers/{did}/config.v2.json", {"Name": "/" + HOSTILE})
    kid = _hex()
    p2 = procs.server(8500)
    procs.into_cgroup(p2, f"kubepods/pod{uuid.uuid4()}/cri-containerd-{kid}.scope")
    _write(tmp_path / f"run/containerd/io.containerd.runtime.v2.task/k8s.io/{kid}/config.json", {"annotations": {
        "io.kubernetes.cri.sandbox-namespace": "\x1b[31mns", "io.kubernetes.cri.sandbox-name": HOSTILE,
        "io.kubernetes.cri.container-name": "\u2066c\x07"}})
    p3 = procs.server(8500)  # a hostile name in the cgroup directory itself
    procs.into_cgroup(p3, "lxc.payload.\x1b[2J\u202ex")

    snap = _sample(roots)
    ours = {_netns(p.pid) for p in (p1, p2, p3)}
    snap = dataclasses.replace(snap, netns=[ns for ns in snap.netns if ns.inode in ours],
                               listeners=[lst for lst in snap.listeners if lst.netns in ours], close_wait=[])
    names = {_netns(p.pid): _entry(snap, _netns(p.pid)) for p in (p1, p2, p3)}
    bad = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066")
    for ns in names.values():
        assert ns.name is not None and ns.name_source in ("docker", "k8s", "lxc")
        assert len(ns.name) <= 128 and not any(c in ns.name for c in bad)
        assert "\\x1b" in ns.name  # escaped visibly, not dropped
    dumped = json.dumps(model.snapshot_to_json(snap), ensure_ascii=False)
    assert not any(c in dumped for c in bad)
    text = format_batch(snap, wide=True)
    assert not any(c in text for c in bad) and max(len(line) for line in text.splitlines()) <= 200

    import asyncio

    asyncio.run(_tui_shows(snap, names[_netns(p1.pid)].name))


async def _tui_shows(snap: model.Snapshot, name: str) -> None:
    """The real app, headless, shown this real snapshot: the names are there, inert."""
    from tcptop_q.app import TcpqTopApp
    from tcptop_q.screens.modals import NetnsPicker
    from tests.ui.fake_source import FakeSource, fixed_clock
    from tests.ui.screen_text import screen_text

    app = TcpqTopApp(FakeSource(), clock=fixed_clock, start_collector=False)
    async with app.run_test(size=(200, 50)) as pilot:
        app.apply_snapshot(snap)
        await pilot.pause()
        shown = screen_text(app)
        assert name[:8] in shown  # top bar and the NETNS column
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, NetnsPicker)
        picker = screen_text(app)
        assert "[docker]" in picker and "[lxc]" in picker and "[k8s]" in picker
        await pilot.press("escape")
        await pilot.pause()
        lst = next(x for x in snap.listeners if _entry(snap, x.netns).name == name)
        app.open_listener(lst.key)
        await pilot.pause()
        title = screen_text(app)
        assert f"[docker] {lst.netns}" in title and name[:8] in title  # the listener screen's netns line
        shown += picker + title
    assert "\x1b" not in shown and "\u202e" not in shown


# ---------------------------------------------------------------- a real podman container


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def test_real_podman_container_listener_shown_under_its_name(root, tmp_path):
    need(shutil.which("podman") is not None and shutil.which("runc") is not None,
         "needs podman and runc (./setup.sh deps installs them)")
    busybox = "/bin/busybox"  # Debian's busybox-static: one static binary, an image by itself
    need(os.path.exists(busybox), "needs busybox-static (./setup.sh deps installs it)")
    tag = f"tq-names-{os.getpid()}"
    image = f"localhost/{tag}:1"
    name = f"tq-web-{os.getpid()}"
    # An image holding only /bin/busybox (no registry is reachable from here).
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(busybox, arcname="bin/busybox")
    cid = None
    try:
        imp = _podman("import", str(tar), image)
        assert imp.returncode == 0, imp.stderr
        run = _podman("--runtime", "runc", "run", "-d", "--ulimit", "nofile=1024:1024", "--ulimit",
                      "nproc=1024:1024", "--network", "none", "--name", name, image,
                      "/bin/busybox", "httpd", "-f", "-p", "8080")
        assert run.returncode == 0, run.stderr
        cid = run.stdout.strip().splitlines()[-1]
        pid = int(_podman("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip())
        assert pid > 0
        assert f"libpod-{cid}" in Path(f"/proc/{pid}/cgroup").read_text()
        inode = _netns(pid)
        assert inode != _netns(os.getpid())  # --network none still gives it a netns of its own
        _wait(lambda: ":8080" in subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-Hltn"],
                                                capture_output=True, text=True).stdout, what="httpd listening")
        want = f"{name} ({cid[:12]})"

        once = tcpq("--once", "--json", "--no-bpf", "--interval", "0.1", "--netns", name)
        assert once.returncode == 0, once.stderr
        out = json.loads(once.stdout)
        (ns,) = out["netns"]
        assert (ns["inode"], ns["netns_name"], ns["netns_source"]) == (inode, want, "podman")
        (lst,) = [x for x in out["listeners"] if x["lport"] == 8080]
        assert (lst["netns"], lst["netns_name"], lst["netns_source"], lst["pid"]) == (inode, want, "podman", pid)

        batch = tcpq("--batch", "-n", "1", "-d", "0.1", "--no-bpf", "--wide", "--netns", f"podman:{cid[:6]}")
        assert batch.returncode == 0, batch.stderr
        row = next(line for line in batch.stdout.splitlines() if ":8080" in line)
        assert name[:17] in row  # (the owner column may still be "-" on a first batch tick: owners load in the background)
    finally:
        if cid is not None or _podman("container", "exists", name).returncode == 0:
            _podman("rm", "-f", "-t", "0", cid or name)
        _podman("rmi", "-f", image)
    assert _podman("container", "exists", name).returncode != 0


# ---------------------------------------------------------------- unprivileged, recordings

NAMER_AS_USER = r"""
import dataclasses, json, sys
from tcptop_q.probes.names import NetnsNamer, StateRoots
namer = NetnsNamer(dataclasses.replace(StateRoots.under(sys.argv[1]), run_netns="/run/netns"))
got = namer.names({int(k): v for k, v in json.loads(sys.argv[2]).items()})
print(json.dumps({"names": {k: [v.name, v.source] for k, v in got.items()}, "notes": namer.notes}))
"""


def test_unprivileged_names_what_it_can_read_and_says_why_not_the_rest(procs, labns):
    import tempfile

    from tests.conftest import ROOT

    need(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    top = Path(tempfile.mkdtemp(prefix="tq-names-"))
    try:
        top.chmod(0o755)  # nobody may look in, except where dockerd would not let it
        did = _hex()
        p1 = procs.server(8600)
        procs.into_cgroup(p1, f"system.slice/docker-{did}.scope")
        _write(top / f"var/lib/docker/containers/{did}/config.v2.json", {"Name": "/secret-web"})
        (top / "var/lib/docker/containers").chmod(0o700)  # as dockerd leaves it
        p2 = procs.server(8600)
        procs.into_cgroup(p2, "lxc.payload.tq-c2")
        members = json.dumps({_netns(p1.pid): [p1.pid], _netns(p2.pid): [p2.pid], labns.inode: []})

        def run(*prefix: str) -> dict:
            res = subprocess.run([*prefix, sys.executable, "-c", NAMER_AS_USER, str(top), members],
                                 capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert res.returncode == 0, res.stderr
            return json.loads(res.stdout)

        as_root = run()
        assert as_root["names"][str(_netns(p1.pid))] == [f"secret-web ({did[:12]})", "docker"]
        assert as_root["notes"] == []
        user = run("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
        assert user["names"][str(_netns(p1.pid))] == [f"docker:{did[:12]}", "cgroup"]  # the id, not a name
        assert user["names"][str(_netns(p2.pid))] == ["tq-c2", "lxc"]  # /proc/PID/cgroup is world-readable
        assert user["names"][str(labns.inode)] == [labns.name, "ip-netns"]  # so is /run/netns
        (note,) = [n for n in user["notes"] if "docker" in n]
        assert f"{top}/var/lib/docker/containers not readable (needs root)" in note and "1 namespace" in note
    finally:
        shutil.rmtree(top)


def test_recording_keeps_names_and_old_recordings_replay(labns, tmp_path):
    import gzip

    labns.serve(port=8098, backlog=5)
    rec = tmp_path / "names.tcpq.gz"
    res = tcpq("--batch", "-n", "2", "-d", "0.1", "--no-bpf", "--record", str(rec))
    assert res.returncode == 0, res.stderr
    name, inode = labns.name, labns.inode
    labns.close()  # the netns is gone, as on another machine: the names come from the file
    once = tcpq("--replay", str(rec), "--once", "--json", "--netns", name)
    assert once.returncode == 0, once.stderr
    out = json.loads(once.stdout)
    assert [(ns["inode"], ns["netns_name"], ns["netns_source"]) for ns in out["netns"]] == [(inode, name, "ip-netns")]
    (lst,) = [x for x in out["listeners"] if x["lport"] == 8098]
    assert (lst["netns_name"], lst["netns_source"]) == (name, "ip-netns")

    # A recording made before names existed: no netns_name / netns_source anywhere.
    old = tmp_path / "old.tcpq.gz"
    with gzip.open(rec, "rt") as src, gzip.open(old, "wt") as dst:
        for line in src:
            obj = json.loads(line)
            snap = obj.get("snapshot")
            if snap:
                for entry in snap["netns"] + snap["listeners"]:
                    entry.pop("netns_name", None)
                    entry.pop("netns_source", None)
            dst.write(json.dumps(obj, separators=(",", ":")) + "\n")
    once = tcpq("--replay", str(old), "--once", "--json", "--netns", str(inode))
    assert once.returncode == 0, once.stderr
    out = json.loads(once.stdout)
    assert [(ns["netns_name"], ns["netns_source"]) for ns in out["netns"]] == [(None, None)]
    assert [x["lport"] for x in out["listeners"]] == [8098]
    bad = tcpq("--replay", str(old), "--once", "--netns", name)
    assert bad.returncode == 2 and "recording" in bad.stderr and bad.stderr.count("\n") == 1
