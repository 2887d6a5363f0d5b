"""The pure parts of probes/names.py: cgroup files as each runtime and cgroup layout writes
them (texts as read from /proc/PID/cgroup), --netns matching, and name escaping."""

from __future__ import annotations

from tcptop_q.probes.names import NAME_MAX, CgroupHint, clean, match_netns, parse_cgroup

ID = "cc710115efd96113b286b3a34720ff5fdc98a976584b9c46cc4cf1961ff51727"
UID = "0b5f6a38-9d47-4c1e-8f0a-3e2d1c4b5a69"

# podman 4.3 with runc on this machine kind (hybrid: v1 hierarchies plus the unified one)
PODMAN_HYBRID = "\n".join(
    [f"{n}:{c}:/libpod_parent/libpod-{ID}" for n, c in
     ((9, "name=systemd"), (8, "pids"), (4, "memory"), (1, "cpu"))] + [f"0::/libpod_parent/libpod-{ID}"]
) + "\n"


def test_each_runtime_and_layout():
    cases = {
        PODMAN_HYBRID: CgroupHint("podman", ID),
        f"0::/machine.slice/libpod-{ID}.scope/container\n": CgroupHint("podman", ID),
        f"0::/system.slice/docker-{ID}.scope\n": CgroupHint("docker", ID),
        f"12:memory:/docker/{ID}\n11:pids:/docker/{ID}\n0::/\n": CgroupHint("docker", ID),
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
        f"cri-containerd-{ID}.scope\n": CgroupHint("containerd", ID, UID),
        f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{ID}.scope\n": CgroupHint("cri-o", ID, UID),
        f"3:cpu:/kubepods/burstable/pod{UID}/{ID}\n": CgroupHint("kubepods", ID, UID),
        "0::/machine.slice/machine-my\\x2dbox.scope/payload\n": CgroupHint("nspawn", "my-box"),
        "0::/machine.slice/systemd-nspawn@web.service/payload\n": CgroupHint("nspawn", "web"),
        "0::/lxc.payload.c1/init.scope\n": CgroupHint("lxc", "c1"),
        "4:memory:/lxc/c2\n0::/\n": CgroupHint("lxc", "c2"),
        "0::/user.slice/user-1000.slice/session-2.scope\n": CgroupHint(),
        "0::/\n": CgroupHint(),
    }
    for text, want in cases.items():
        assert parse_cgroup(text) == want, text


def test_conmon_and_short_ids_are_not_containers():
    assert parse_cgroup(f"0::/machine.slice/libpod-conmon-{ID}.scope\n") == CgroupHint()
    assert parse_cgroup(f"0::/system.slice/crio-conmon-{ID}.scope\n") == CgroupHint()
    assert parse_cgroup("0::/system.slice/docker-abc123.scope\n") == CgroupHint()
    assert parse_cgroup("0::/system.slice/docker.service\n") == CgroupHint()


def test_clean_bounds_and_escapes():
    hostile = "\x1b]0;x\x07\u202e\u2066" + "\udc80" + "A" * 5000
    out = clean(hostile)
    assert len(out) <= NAME_MAX and out.endswith("…")
    assert out.startswith("\\x1b]0;x\\x07\\u202e\\u2066\\udc80A")
    assert clean("web-1") == "web-1"


def test_match_netns():
    entries = [
        (1, "host", "init"),
        (2, "web-7f9c (3f2a1b2c3d4e)", "docker"),
        (3, "web (aaaabbbbcccc)", "podman"),
        (4, "shop/web-7f9c-5d8b (nginx)", "k8s"),
        (5, "docker:0123456789ab", "cgroup"),
        (6, None, None),
        (7, "blue", "ip-netns"),
    ]
    assert match_netns("web-7f9c", entries) == [2]
    assert match_netns("web-7f9c (3f2a1b2c3d4e)", entries) == [2]
    assert match_netns("docker:3f2a", entries) == [2]
    assert match_netns("docker:web", entries) == [2]
    assert match_netns("podman:aaaa", entries) == [3]
    assert match_netns("shop/web-7f9c-5d8b", entries) == [4]
    assert match_netns("web-7f9c-5d8b", entries) == [4]
    assert match_netns("k8s:shop/", entries) == [4]
    assert match_netns("docker:0123", entries) == [5]
    assert match_netns("blue", entries) == [7]
    assert match_netns("6", entries) == [6]
    assert match_netns("host", entries) == [1]
    assert match_netns("we", entries) == []  # a bare prefix is not a name
    assert match_netns("docker:", entries) == []
