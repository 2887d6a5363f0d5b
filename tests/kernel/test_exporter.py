"""`tcpq-top --serve` against the kernel: seed experiment 1 in a private netns, scraped by us and
by a real Prometheus; TLS + basic auth; signals; the probes failing; a scrape load under a storm."""

from __future__ import annotations

import base64
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from tests.conftest import need
from tests.kernel.exporter_helpers import (
    Exporter,
    Prometheus,
    loaded_programs,
    one,
    prog_ids_of,
    ss_listener,
    wait_until,
)


def listener_values(s: dict, port: int) -> dict:
    ids = [lab for lab, _ in s.get("tcpq_listener_info", []) if lab["lport"] == str(port)]
    assert len(ids) == 1, ids
    key = {k: ids[0][k] for k in ("netns", "laddr", "lport", "cookie")}
    return {name: one(s, f"tcpq_listener_{name}", **key) for name in (
        "accept_queue_length", "accept_queue_limit", "syn_queue_length", "close_wait", "drops_total",
        "overflows_total", "queued_total", "accepted_total")} | {"info": ids[0]}


def test_seed_experiment_1_scraped_values_equal_the_kernels(labns, bpf):
    """backlog 5, nobody accepts, 10 clients: 6 queued, 4 overflow. Every listener value on
    /metrics equals ss (Recv-Q, Send-Q, skmem d) and the netns' nstat ListenOverflows delta."""
    server = labns.serve(addr="0.0.0.0", port=8080, backlog=5, mode="no-accept")
    exp = Exporter("--interval", "0.3", "--netns", str(labns.inode))
    try:
        wait_until(lambda: one(exp.scrape(), "tcpq_bpf_up") == 1, 90, "tcpq_bpf_up 1")
        before = labns.tcpext()
        assert labns.clients(addr="127.0.0.1", port=8080, count=10, connect_timeout=0.3, gap=0.05) == 6
        after = labns.tcpext()
        delta = after["ListenOverflows"] - before["ListenOverflows"]
        assert delta > 0

        def settled():
            v = listener_values(exp.scrape(), 8080)
            return v if v["overflows_total"] == delta and v["close_wait"] == 6 else None

        v = wait_until(settled, 30, "overflows == nstat delta")
        kernel = ss_listener(labns, 8080)
        assert v["accept_queue_length"] == kernel["recv_q"] == 6
        assert v["accept_queue_limit"] == kernel["send_q"] == 5
        assert v["drops_total"] == kernel["drops"] > 0
        assert v["syn_queue_length"] == 0
        cw = labns.run(["ss", "-tnH", "state", "close-wait", "sport = :8080"]).stdout.splitlines()
        assert v["close_wait"] == len(cw) == 6
        assert v["queued_total"] == 6
        # accept() counts: absent while the probes cannot tell; once they can, 0 (nobody accepts)
        assert v["accepted_total"] in (None, 0)
        assert v["info"]["pid"] == str(server.pid)
        s = exp.scrape()
        ns = {"netns": str(labns.inode)}
        assert one(s, "tcpq_netns_listen_overflows_total", **ns) == after["ListenOverflows"]
        assert one(s, "tcpq_netns_listen_drops_total", **ns) == labns.tcpext()["ListenDrops"]
        assert one(s, "tcpq_listeners_dropped_from_export") == 0
    finally:
        assert exp.stop() == 0


def test_a_real_prometheus_scrapes_the_same_numbers_and_rates_only_the_overflowing_listener(labns, bpf):
    labns.serve(addr="0.0.0.0", port=8080, backlog=5, mode="no-accept")
    labns.serve(addr="0.0.0.0", port=8081, backlog=64, mode="read-until-eof")  # healthy
    exp = Exporter("--interval", "0.5", "--netns", str(labns.inode))
    prom = Prometheus({"static_configs": [{"targets": [f"127.0.0.1:{exp.port}"]}]})
    try:
        wait_until(lambda: prom.value('tcpq_bpf_up{job="tcpq"}') == 1, 90, "Prometheus sees tcpq_bpf_up 1")
        before = labns.tcpext()
        # overflowing: the queue fills, then every further SYN is dropped; healthy: served at once
        bad = labns.worker("clients", addr="127.0.0.1", port=8080, count=10, connect_timeout=0.3, gap=0.05,
                           rounds=0, round_gap=0.2, duration=8)
        good = labns.worker("clients", addr="127.0.0.1", port=8081, count=5, connect_timeout=1, gap=0.05,
                            rounds=0, round_gap=0.2, duration=8)

        def rates():
            got = {m["lport"]: v for m, v in prom.query("rate(tcpq_listener_overflows_total[5s])")}
            return got if got.get("8080", 0) > 0 else None

        got = wait_until(rates, 30, "rate(overflows) > 0 for :8080", step=0.5)
        assert got["8081"] == 0, got  # the healthy listener is there, and never overflows
        # it did get traffic (over the whole run: a 5 s rate is 0 again if the wait above was long)
        assert prom.value('increase(tcpq_listener_queued_total{lport="8081"}[1m])') > 0
        bad.wait(timeout=30)
        good.wait(timeout=30)
        delta = labns.tcpext()["ListenOverflows"] - before["ListenOverflows"]
        wait_until(lambda: prom.value('tcpq_listener_overflows_total{lport="8080"}') == delta
                   and prom.value('tcpq_listener_overflows_total{lport="8081"}') == 0, 30,
                   f"Prometheus' overflows == nstat delta {delta}", step=0.5)
        kernel = ss_listener(labns, 8080)
        assert prom.value('tcpq_listener_accept_queue_length{lport="8080"}') == kernel["recv_q"] == 6
        assert prom.value('tcpq_listener_accept_queue_limit{lport="8080"}') == kernel["send_q"] == 5
        wait_until(lambda: prom.value('tcpq_listener_drops_total{lport="8080"}') == ss_listener(labns, 8080)["drops"],
                   20, "drops == skmem d", step=0.5)
        # the owner joins through the info metric, as the shipped rules do
        joined = prom.query('tcpq_listener_accept_queue_length{lport="8080"} * on (job, instance, netns, laddr, '
                            'lport, cookie) group_left (pid, comm) tcpq_listener_info')
        assert len(joined) == 1 and joined[0][0]["comm"].startswith("python")
    finally:
        prom.close()
        assert exp.stop() == 0


def _cert(tmp_path):
    need(shutil.which("openssl") is not None, "needs openssl")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True, timeout=60)
    return tmp_path / "cert.pem"


def test_tls_and_basic_auth_401_without_200_with_and_prometheus_scrapes_with_them(tmp_path, root):
    import bcrypt

    cert = _cert(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode().replace("$2b$", "$2y$", 1)
    (tmp_path / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  prom: '{hashed}'\n"
        "http_server_config:\n  http2: true\n  headers:\n    Strict-Transport-Security: max-age=31536000\n"
        "    X-Content-Type-Options: nosniff\n")
    extra = {"Strict-Transport-Security": "max-age=31536000", "X-Content-Type-Options": "nosniff"}
    exp = Exporter("--no-bpf", "--interval", "0.5", "--web-config", str(tmp_path / "web.yml"))
    prom = None
    try:
        assert exp.scheme == "https"
        ctx = ssl.create_default_context(cafile=str(cert))
        auth = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
        wrong = {"Authorization": "Basic " + base64.b64encode(b"prom:nope").decode()}
        code, _, headers = exp.get(context=ctx)
        assert code == 401 and headers.get("WWW-Authenticate", "").startswith("Basic")
        assert {k: headers.get(k) for k in extra} == extra  # http_server_config.headers, on errors too
        assert exp.get(headers=wrong, context=ctx)[0] == 401
        assert exp.get("/", context=ctx)[0] == 401  # every path is behind the credentials
        code, _, headers = exp.get(headers=auth, context=ctx)
        assert code == 200 and {k: headers.get(k) for k in extra} == extra
        wait_until(lambda: b"tcpq_listener_accept_queue_limit{" in exp.get(headers=auth, context=ctx)[1], 20,
                   "listener series over TLS")
        code, _, headers = exp.get("/nope", headers=auth, context=ctx)
        assert code == 404 and {k: headers.get(k) for k in extra} == extra
        with pytest.raises(ssl.SSLError):  # plain HTTP is not served on the TLS port
            ssl.create_default_context().wrap_socket(socket.create_connection(("127.0.0.1", exp.port), 5),
                                                      server_hostname="127.0.0.1")
        prom = Prometheus({"scheme": "https", "tls_config": {"ca_file": str(cert)},
                           "basic_auth": {"username": "prom", "password": "s3cret"},
                           "static_configs": [{"targets": [f"127.0.0.1:{exp.port}"]}]})
        wait_until(lambda: prom.value('up{job="tcpq"}') == 1 and prom.value('count(tcpq_listener_info)'), 30,
                   "Prometheus scrapes over TLS with basic auth", step=0.5)
    finally:
        if prom is not None:
            prom.close()
        assert exp.stop() == 0


def test_plain_http_paths_and_methods(root):
    exp = Exporter("--no-bpf", "--interval", "0.5")
    try:
        assert exp.get("/")[0] == 200
        assert exp.get("/metrics?name[]=x")[0] == 200
        for path in ("/metrics/", "/debug", "/../etc/passwd", "/favicon.ico"):
            assert exp.get(path)[0] == 404, path
        with socket.create_connection(("127.0.0.1", exp.port), 5) as s:
            s.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            assert s.recv(100).split(b" ")[1] in (b"501", b"405")  # read-only
        code, body, headers = exp.get(headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert code == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
    finally:
        assert exp.stop() == 0


def test_slow_and_huge_requests_do_not_stall_sampling(root):
    exp = Exporter("--no-bpf", "--interval", "0.2")
    idle = []
    try:
        for _ in range(40):  # connections that never send a request
            idle.append(socket.create_connection(("127.0.0.1", exp.port), 5))
        partial = socket.create_connection(("127.0.0.1", exp.port), 5)
        partial.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and a head that never ends
        idle.append(partial)
        with socket.create_connection(("127.0.0.1", exp.port), 10) as huge:
            huge.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 1000 + b"\r\n")
            try:
                for _ in range(200):
                    huge.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
            except OSError:
                pass  # the server closed on us: as good as a 431
            reply = huge.recv(200)
            assert reply == b"" or reply.split(b" ")[1] == b"431", reply
        t1 = wait_until(lambda: one(exp.scrape(), "tcpq_sample_timestamp_seconds"), 20, "a first sample")
        t2 = wait_until(lambda: (one(exp.scrape(), "tcpq_sample_timestamp_seconds") or 0) > t1 + 0.5 and True, 10,
                        "sampling goes on while slow clients hold connections")
        assert t2
        # idle connections are dropped by the server (CONN_TIMEOUT_S), not held for ever
        idle[0].settimeout(15)
        assert idle[0].recv(10) == b""
    finally:
        for s in idle:
            s.close()
        assert exp.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_detach_everything_and_exit_0(bpf, sig):
    exp = Exporter("--interval", "0.3", "--port", "1")
    wait_until(lambda: one(exp.scrape(), "tcpq_bpf_up") == 1, 90, "tcpq_bpf_up 1")
    held = prog_ids_of(exp.proc.pid)
    assert held
    assert exp.stop(sig) == 0
    err = exp.proc.stderr.read()
    assert "Traceback" not in err, err
    wait_until(lambda: not held & loaded_programs(), 10, "its programs gone from the kernel")


def test_probes_failing_keep_netlink_metrics_with_bpf_up_0(labns):
    """Without CAP_BPF/CAP_PERFMON the probes cannot load: listener numbers from sock_diag stay."""
    need(shutil.which("capsh") is not None, "needs capsh (libcap2-bin)")
    labns.serve(addr="127.0.0.1", port=8096, backlog=7)
    exp = Exporter("--interval", "0.3", "--netns", str(labns.inode),
                   argv=["capsh", "--drop=cap_bpf,cap_perfmon", "--", "-c",
                         f"exec {__import__('sys').executable} -m tcptop_q \"$@\"", "tcpq-top"])
    try:
        s = wait_until(lambda: (lambda s: s if one(s, "tcpq_listener_accept_queue_limit", lport=8096) else None)(exp.scrape()),
                       30, "the lab listener exported")
        assert one(s, "tcpq_bpf_up") == 0
        assert one(s, "tcpq_listener_accept_queue_limit", lport=8096) == ss_listener(labns, 8096)["send_q"] == 7
        assert one(s, "tcpq_listener_overflows_total", lport=8096) is None  # unknown: absent, not 0
        assert "tcpq_lost_events_total" not in s
    finally:
        assert exp.stop() == 0


def test_netns_churn(root):
    """Namespaces come and go between scrapes: their series come and go, the exporter stays up."""
    from tcptop_q.lab.netns import LabNetns

    exp = Exporter("--no-bpf", "--interval", "0.2")
    try:
        for i in range(3):
            with LabNetns("churn") as ns:
                ns.serve(addr="127.0.0.1", port=8097, backlog=3 + i)
                want, ino = 3 + i, ns.inode
                wait_until(lambda: one(exp.scrape(), "tcpq_listener_accept_queue_limit", netns=ino, lport=8097)  # noqa: B023
                           == want, 20, "the new netns' listener")  # noqa: B023
            wait_until(lambda: one(exp.scrape(), "tcpq_listener_accept_queue_limit", netns=ino, lport=8097) is None,  # noqa: B023
                       20, "the removed netns' listener gone")
        assert one(exp.scrape(), "tcpq_sample_errors_total") == 0
    finally:
        assert exp.stop() == 0


def test_50_scrapes_a_second_for_30_s_under_a_storm(labns, bpf):
    """Every scrape answered, RSS bounded, while a connection storm runs in the netns."""
    labns.serve(addr="0.0.0.0", port=8090, backlog=128, mode="echo-close", duration=60)
    exp = Exporter("--interval", "0.5")
    try:
        wait_until(lambda: one(exp.scrape(), "tcpq_bpf_up") == 1, 90, "tcpq_bpf_up 1")
        storm = labns.worker("stream", addr="127.0.0.1", port=8090, rate=2000, duration=34)
        for _ in range(50):  # warm-up: the first renders allocate what the steady state reuses
            exp.scrape()
        rss0 = exp.rss_kb()
        codes: list[int] = []
        queued: list[float] = []
        start = time.monotonic()
        for i in range(1500):
            target = start + i / 50
            time.sleep(max(0.0, target - time.monotonic()))
            code, body, _ = exp.get()
            codes.append(code)
            if i % 100 == 0:
                from tests.kernel.exporter_helpers import parse

                queued.append(one(parse(body.decode()), "tcpq_listener_queued_total", netns=labns.inode, lport=8090) or 0)
        elapsed = time.monotonic() - start
        rss1 = exp.rss_kb()
        storm.wait(timeout=60)
        assert codes.count(200) == 1500, {c: codes.count(c) for c in set(codes)}
        assert elapsed < 40, elapsed  # 50/s held (30 s of scrapes)
        assert queued[-1] > queued[0] + 10_000, queued  # the storm ran, and was counted
        assert rss1 - rss0 < 20 * 1024, (rss0, rss1)
        print(f"storm: {len(codes)} scrapes in {elapsed:.1f}s, RSS {rss0} -> {rss1} kB, queued {queued[0]:.0f} -> {queued[-1]:.0f}")
    finally:
        assert exp.stop() == 0


def test_the_unit_files_capability_set_is_enough(labns, bpf, tmp_path):
    """Run as an unprivileged user holding exactly the unit's capabilities (ambient, as
    systemd's AmbientCapabilities= gives them): BPF numbers, other netns, other users' owners."""
    import re
    import sys

    from tests.conftest import ROOT

    need(shutil.which("capsh") is not None, "needs capsh (libcap2-bin)")
    unit = (ROOT / "contrib" / "systemd" / "tcpq-top-exporter.service").read_text()
    caps = re.search(r"^AmbientCapabilities=(.*)$", unit, re.M).group(1).split()
    assert re.search(r"^CapabilityBoundingSet=(.*)$", unit, re.M).group(1).split() == caps
    assert "DynamicUser=yes" in unit
    capset = ",".join(c.lower() for c in caps)
    server = labns.serve(addr="0.0.0.0", port=8080, backlog=5, mode="no-accept")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.chown(cache, "nobody")
    tmp_path.chmod(0o755)
    exp = Exporter("--interval", "0.3", argv=[
        "capsh", f"--caps={capset}+eip cap_setpcap,cap_setuid,cap_setgid+ep", "--keep=1", "--user=nobody",
        f"--addamb={capset}", "--", "-c", f'export XDG_CACHE_HOME={cache}; exec {sys.executable} -m tcptop_q "$@"', "tcpq-top"])
    try:
        with open(f"/proc/{exp.proc.pid}/status") as f:
            status = f.read()
        wait_until(lambda: one(exp.scrape(), "tcpq_bpf_up") == 1, 120, "tcpq_bpf_up 1 with the unit's capabilities")
        uid = re.search(r"^Uid:\s+(\d+)", open(f"/proc/{exp.proc.pid}/status").read(), re.M).group(1)
        assert uid == "65534", status
        before = labns.tcpext()
        assert labns.clients(addr="127.0.0.1", port=8080, count=10, connect_timeout=0.3, gap=0.05) == 6
        delta = labns.tcpext()["ListenOverflows"] - before["ListenOverflows"]
        s = wait_until(lambda: (lambda s: s if one(s, "tcpq_listener_overflows_total", netns=labns.inode, lport=8080)
                                == delta else None)(exp.scrape()), 30, "overflows == nstat delta")
        info = [lab for lab, _ in s["tcpq_listener_info"] if lab["netns"] == str(labns.inode) and lab["lport"] == "8080"]
        assert info and info[0]["pid"] == str(server.pid)  # a root process' fds, read as nobody
    finally:
        assert exp.stop() == 0


def test_unit_file_verifies(tmp_path):
    from tests.conftest import ROOT

    need(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (systemd)")
    exe = shutil.which("tcpq-top") or str(ROOT / ".venv" / "bin" / "tcpq-top")
    text = (ROOT / "contrib" / "systemd" / "tcpq-top-exporter.service").read_text()
    unit = tmp_path / "tcpq-top-exporter.service"
    unit.write_text(text.replace("/opt/tcpq-top/bin/tcpq-top", exe))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "tcpq-top-exporter" not in proc.stderr, proc.stderr  # no warning about our unit
    bad = tmp_path / "bad" / "tcpq-top-exporter.service"
    bad.parent.mkdir()
    bad.write_text(text.replace("/opt/tcpq-top/bin/tcpq-top", exe).replace("ProtectSystem=strict", "ProtectSystem=bogus"))
    proc = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "protect system value" in proc.stderr and "bogus" in proc.stderr  # the check reads our settings
