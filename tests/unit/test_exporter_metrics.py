"""The exporter's pure parts: histogram re-bucketing, absent (None) values, the cardinality cap,
identity labels, the --serve address and the web config file. Rendered through
prometheus_client and parsed back with its own parser, as Prometheus would read it."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tcptop_q.export import parse_listen_address
from tcptop_q.export.metrics import IDENTITY, LATENCY_BOUNDS, ExporterState, latency_buckets, select
from tcptop_q.export.server import Exporter
from tcptop_q.model import LatencySummary, Listener, ListenerKey, NetnsCounters, Snapshot, Sources


def lst(port: int = 8080, cookie: int = 1, **kw) -> Listener:
    base = dict(key=ListenerKey(4026531840, "ipv4", "127.0.0.1", port, cookie), inode=100 + cookie, pid=None, comm=None,
                accept_queue=0, backlog=128, syn_queue=0, drops=0, drop_rate=0.0)
    base.update(kw)
    return Listener(**base)


def snap(listeners, bpf: bool = True, netns=None) -> Snapshot:
    return Snapshot(time=1_700_000_000.0, interval=1.0, kernel="6.18", hostname="h",
                    sources=Sources(netlink=True, bpf=bpf, bpf_state="live" if bpf else "off"),
                    netns=netns if netns is not None else [NetnsCounters(4026531840, {"ListenOverflows": 7})],
                    listeners=listeners, close_wait=[])


def scrape(s: Snapshot | None, max_listeners: int = 2000) -> dict:
    """family name -> list of (labels, value, sample name), from the text format."""
    exp = Exporter(max_listeners)
    exp.publish(s, 0.01)
    body, ctype = exp.render("", False)
    assert ctype.startswith("text/plain")
    out: dict = {}
    for fam in text_string_to_metric_families(body.decode()):
        out[fam.name] = [(s.labels, s.value, s.name) for s in fam.samples]
    return out


# ------------------------------------------------------------------ histograms


def test_buckets_aligned_with_the_le_bounds_are_exact():
    s = LatencySummary(count=6, sum_s=0.7, max_s=0.5, p50_s=0.001, p90_s=0.5, p99_s=0.5,
                       buckets=((0.001, 3), (0.1, 2), (0.5, 1)))
    got = dict(latency_buckets(s))
    assert got["0.001"] == 3 and got["0.0025"] == 3 and got["0.1"] == 5 and got["0.5"] == 6
    assert got["0.0005"] == 0 and got["+Inf"] == 6
    assert list(got) == [repr(b) for b in LATENCY_BOUNDS] + ["+Inf"]


def test_a_fine_bucket_straddling_a_bound_is_counted_one_bound_up_never_below():
    # (0.0012 s upper bound): its samples may be above 0.001, so they are not claimed by le=0.001
    s = LatencySummary(count=4, sum_s=0.004, max_s=0.0012, p50_s=0.001, p90_s=0.0012, p99_s=0.0012,
                       buckets=((0.00095, 1), (0.0012, 3)))
    got = dict(latency_buckets(s))
    assert got["0.001"] == 1
    assert got["0.0025"] == 4


def test_cumulative_buckets_are_monotonic_and_capped_by_count():
    # fine buckets over the top bound land only in +Inf; a count lower than the buckets' sum caps them
    s = LatencySummary(count=5, sum_s=500.0, max_s=120.0, p50_s=1.0, p90_s=120.0, p99_s=120.0,
                       buckets=((1.0, 4), (2.0, 2), (120.0, 1)))
    got = latency_buckets(s)
    values = [v for _, v in got]
    assert values == sorted(values)
    assert dict(got)["60.0"] == 5 and dict(got)["+Inf"] == 5 and dict(got)["1.0"] == 4


def test_histogram_renders_and_parses_as_prometheus_reads_it():
    aw = LatencySummary(count=3, sum_s=1.5, max_s=1.2, p50_s=0.2, p90_s=1.2, p99_s=1.2,
                        buckets=((0.25, 2), (1.25, 1)))
    out = scrape(snap([lst(accept_wait=aw)]))
    samples = out["tcpq_listener_accept_wait_seconds"]
    by_le = {lab["le"]: v for lab, v, name in samples if name.endswith("_bucket")}
    assert by_le["0.25"] == 2 and by_le["1.0"] == 2 and by_le["2.5"] == 3 and by_le["+Inf"] == 3
    assert [v for _, v, n in samples if n.endswith("_count")] == [3]
    assert [v for _, v, n in samples if n.endswith("_sum")] == [1.5]
    assert "tcpq_listener_handshake_seconds" not in out or not out["tcpq_listener_handshake_seconds"]


# ------------------------------------------------------------------ None = absent


def test_unknown_values_are_absent_samples_never_zero():
    out = scrape(snap([lst()], bpf=False))  # the BPF fields of the model are None
    for fam in ("tcpq_listener_overflows", "tcpq_listener_queued", "tcpq_listener_accepted",
                "tcpq_listener_synack_retransmits", "tcpq_listener_resets_sent",
                "tcpq_listener_accept_wait_seconds", "tcpq_listener_handshake_seconds", "tcpq_listener_close_wait"):
        assert not out.get(fam), fam
    assert "tcpq_lost_events" not in out  # no probes, no feed to lose events from
    assert out["tcpq_bpf_up"][0][1] == 0
    # netlink numbers stay
    assert [v for _, v, _ in out["tcpq_listener_accept_queue_limit"]] == [128]
    assert [v for _, v, _ in out["tcpq_listener_drops"]] == [0]


def test_known_values_appear_without_any_change():
    full = lst(overflows=4, queued=10, accepted=6, synack_retrans=1, resets_sent=2,
               children={"ESTABLISHED": 3, "CLOSE_WAIT": 2})
    out = scrape(snap([full]))
    assert [v for _, v, _ in out["tcpq_listener_overflows"]] == [4]
    assert [v for _, v, _ in out["tcpq_listener_queued"]] == [10]
    assert [v for _, v, _ in out["tcpq_listener_accepted"]] == [6]
    assert [v for _, v, _ in out["tcpq_listener_synack_retransmits"]] == [1]
    assert [v for _, v, _ in out["tcpq_listener_resets_sent"]] == [2]
    assert [v for _, v, _ in out["tcpq_listener_close_wait"]] == [2]
    assert [n for _, _, n in out["tcpq_listener_overflows"]] == ["tcpq_listener_overflows_total"]


def test_netns_name_and_owner_only_on_info_and_empty_when_unknown():
    a = lst(pid=42, comm="nginx")
    netns = [NetnsCounters(4026531840, {"ListenOverflows": 7, "ListenDrops": 9}, name="web-1", name_source="podman")]
    out = scrape(snap([a, lst(port=9090, cookie=2)], netns=netns))
    info = {lab["lport"]: lab for lab, _, _ in out["tcpq_listener_info"]}
    assert info["8080"]["pid"] == "42" and info["8080"]["comm"] == "nginx" and info["8080"]["netns_name"] == "web-1"
    assert info["9090"]["pid"] == "" and info["9090"]["comm"] == ""
    nsinfo = out["tcpq_netns_info"]
    assert nsinfo[0][0] == {"netns": "4026531840", "netns_name": "web-1", "name_source": "podman"}
    # counters never carry pid/comm/netns_name, nor any peer address/port
    for name, samples in out.items():
        if name.startswith("tcpq_listener_") and name != "tcpq_listener_info":
            for labels, _, _ in samples:
                assert set(labels) - {"le"} == set(IDENTITY), (name, labels)
    assert [v for _, v, _ in out["tcpq_netns_listen_drops"]] == [9]
    assert not out["tcpq_netns_syncookies_sent"]  # not read: absent, not 0


def test_netns_name_unknown_is_an_empty_label():
    out = scrape(snap([lst()]))
    assert out["tcpq_netns_info"][0][0]["netns_name"] == ""


def test_reuseport_members_are_distinct_series():
    out = scrape(snap([lst(cookie=11, accept_queue=3), lst(cookie=12, accept_queue=5)]))
    series = {(lab["lport"], lab["cookie"]): v for lab, v, _ in out["tcpq_listener_accept_queue_length"]}
    assert series == {("8080", "11"): 3, ("8080", "12"): 5}


def test_no_snapshot_yet_serves_only_self_metrics():
    out = scrape(None)
    assert out["tcpq_bpf_up"][0][1] == 0
    assert not any(name.startswith("tcpq_listener_") for name in out)


# ------------------------------------------------------------------ cardinality


def test_max_listeners_keeps_the_most_active_and_counts_the_rest():
    quiet = [lst(port=1000 + i, cookie=i) for i in range(10)]
    overflowing = lst(port=80, cookie=100, overflow_rate=5.0)
    dropping = lst(port=81, cookie=101, drop_rate=1.0)
    full = lst(port=82, cookie=102, accept_queue=129, backlog=128)
    kept, left = select([*quiet, full, dropping, overflowing], 3)
    assert [x.lport for x in kept] == [80, 81, 82] and left == 10
    out = scrape(snap([*quiet, full, dropping, overflowing]), max_listeners=3)
    assert out["tcpq_listeners_dropped_from_export"][0][1] == 10
    assert {lab["lport"] for lab, _, _ in out["tcpq_listener_info"]} == {"80", "81", "82"}
    assert out["tcpq_listeners"][0][1] == 13


def test_a_quiet_set_is_the_same_set_every_time():
    a = [lst(port=1000 + i, cookie=i) for i in range(50)]
    first, _ = select(a, 10)
    second, _ = select(list(reversed(a)), 10)
    assert [x.key for x in first] == [x.key for x in second]


def test_exporter_state_counts_errors_and_keeps_the_last_snapshot():
    exp = Exporter(10)
    s = snap([lst()])
    exp.publish(s, 0.02)
    exp.publish(None, None, error=True)
    pub = exp.published
    assert pub.snap is s and pub.state.sample_errors == 1 and pub.state.sample_duration_s == 0.02
    assert isinstance(pub.state, ExporterState)


def test_openmetrics_by_content_negotiation():
    exp = Exporter(10)
    exp.publish(snap([lst(overflows=1)]), 0.01)
    body, ctype = exp.render("application/openmetrics-text; version=1.0.0; charset=utf-8", False)
    assert ctype.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b"tcpq_listener_overflows_total{" in body
    text, ctype2 = exp.render("text/plain", False)
    assert ctype2.startswith("text/plain") and b"# EOF" not in text


def test_latency_sum_not_finite_is_left_out():
    bad = LatencySummary(count=1, sum_s=math.inf, max_s=1.0, p50_s=1.0, p90_s=1.0, p99_s=1.0, buckets=((1.0, 1),))
    out = scrape(snap([lst(handshake=bad)]))
    assert not out.get("tcpq_listener_handshake_seconds")


# ------------------------------------------------------------------ --serve address


@pytest.mark.parametrize("text, want", [
    ("9100", ("127.0.0.1", 9100)),
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ("[::1]:9100", ("::1", 9100)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_serve_address(text, want):
    assert parse_listen_address(text) == want


@pytest.mark.parametrize("text", [":9100", "::1:9100", "[127.0.0.1]:9100", "localhost:9100", "9100x", "1.2.3.4:70000", "[::1]"])
def test_serve_address_refused(text):
    with pytest.raises(ValueError) as exc:
        parse_listen_address(text)
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ spliced rendering


def _without_process(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if "process_" not in line and not line.startswith("# EOF"))


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_spliced_rendering_equals_prometheus_clients_own_rendering(accept, monkeypatch):
    """The per-listener cache (server.ListenerCache) gives byte for byte what prometheus_client
    prints for the whole snapshot, as listeners change, appear and go between snapshots."""
    from prometheus_client import exposition

    from tcptop_q.export.metrics import families
    from tcptop_q.export.server import ListenerCache, _registry

    monkeypatch.setattr(ListenerCache, "BATCH", 5)  # several encoder calls per render
    encoder, _ = exposition.choose_encoder(accept)
    aw = LatencySummary(count=3, sum_s=1.5, max_s=1.2, p50_s=0.2, p90_s=1.2, p99_s=1.2, buckets=((0.25, 2), (1.25, 1)))
    listeners = [lst(port=1000 + i, cookie=i, pid=i if i % 3 else None, comm='we"ird\n' if i == 4 else "srv",
                     overflows=i if i % 2 else None, accept_wait=aw if i % 4 == 0 else None,
                     children={"CLOSE_WAIT": i} if i % 5 else {}) for i in range(12)]
    netns = [NetnsCounters(4026531840, {"ListenOverflows": 7}, name="host", name_source="init")]
    exp = Exporter(10)
    from dataclasses import replace

    for step in range(4):
        s = snap(listeners, netns=netns)
        exp.publish(s, 0.01)
        body, _ = exp.render(accept, False)
        pub = exp.published
        want = encoder(_registry(list(families(pub.snap, pub.state, pub.listeners)))).decode()
        assert _without_process(body.decode()) == _without_process(want), step
        if accept:
            assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1
        # next snapshot: one listener changes, one goes, one comes, the netns gets renamed once
        listeners = [replace(listeners[1], accept_queue=step + 1), *listeners[2:], lst(port=2000 + step, cookie=100 + step)]
        if step == 1:
            netns = [NetnsCounters(4026531840, {"ListenOverflows": 8}, name="renamed", name_source="init")]
    assert "renamed" in body.decode()


def _accept_queue_values(text: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text.replace("# EOF\n", ""))
            for s in f.samples if s.name == "tcpq_listener_accept_queue_length"]


def test_a_scraped_encoding_is_made_by_the_publishing_thread_and_others_once_per_snapshot(monkeypatch):
    import gzip as gz

    from tcptop_q.export import server

    calls = []
    real = server._gzip
    monkeypatch.setattr(server, "_gzip", lambda parts: calls.append(1) or real(parts))
    exp = Exporter(10)
    exp.publish(snap([lst(accept_queue=1)]), 0.01)
    om = "application/openmetrics-text; version=1.0.0"
    exp.render(om, True)  # a client asks for this one: compressed by this scrape (once)
    assert len(calls) == 1
    exp.publish(snap([lst(accept_queue=2)]), 0.01)  # what the sampling thread does
    assert len(calls) == 2  # compressed while publishing, not by the next scrape
    body, _ = exp.render(om, True)
    assert len(calls) == 2 and _accept_queue_values(gz.decompress(body).decode()) == [2.0]
    text, ctype = exp.render("text/plain", False)  # never asked before: joined by this scrape
    assert ctype.startswith("text/plain") and _accept_queue_values(text.decode()) == [2.0]
    assert exp.render("text/plain", False)[0] is text  # once per snapshot
    assert len(calls) == 2


def test_a_scrape_never_waits_for_a_render(monkeypatch):
    """While the publishing thread renders a new snapshot, a scrape gets the previous one's
    bytes at once; the new one is served after the hand-over."""
    import gzip
    import threading

    from tcptop_q.export.server import ListenerCache

    exp = Exporter(10)
    exp.publish(snap([lst(accept_queue=1)]), 0.01)
    entered, release = threading.Event(), threading.Event()
    real = ListenerCache.render

    def slow(self, listeners, names):
        entered.set()
        assert release.wait(30)
        return real(self, listeners, names)

    monkeypatch.setattr(ListenerCache, "render", slow)
    om = "application/openmetrics-text; version=1.0.0"
    t = threading.Thread(target=exp.publish, args=(snap([lst(accept_queue=2)]), 0.01))
    t.start()
    try:
        assert entered.wait(30)
        body, _ = exp.render(om, True)  # returns while the render is blocked
        assert _accept_queue_values(gzip.decompress(body).decode()) == [1.0]
    finally:
        release.set()
        t.join(30)
    assert _accept_queue_values(gzip.decompress(exp.render(om, True)[0]).decode()) == [2.0]


def test_the_text_format_is_rendered_from_its_first_scrape_and_dropped_when_unscraped(monkeypatch):
    exp = Exporter(10)
    exp.publish(snap([lst(accept_queue=1)]), 0.01)
    assert "text/plain; version=0.0.4; charset=utf-8" not in exp.rendered.bodies  # nobody asked
    assert _accept_queue_values(exp.render("", False)[0].decode()) == [1.0]  # rendered by this scrape
    exp.publish(snap([lst(accept_queue=2)]), 0.01)
    assert _accept_queue_values(b"".join(exp.rendered.bodies[exp.render("", False)[1]].parts).decode()) == [2.0]
    monkeypatch.setattr(Exporter, "TEXT_KEEP_S", 0.0)
    exp.publish(snap([lst(accept_queue=3)]), 0.01)
    assert len(exp.rendered.bodies) == 1  # OpenMetrics only, the text lines dropped
    assert _accept_queue_values(exp.render("", False)[0].decode()) == [3.0]


def test_gzip_body_is_the_plain_body_compressed():
    import gzip as gz

    exp = Exporter(3000)
    exp.publish(snap([lst(port=1000 + i % 60000, cookie=i, accept_queue=i % 7) for i in range(3000)]), 0.01)
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        plain, _ = exp.render(accept, False)
        assert len(plain) > 600_000  # several 256 KiB blocks
        assert gz.decompress(exp.render(accept, True)[0]) == plain
