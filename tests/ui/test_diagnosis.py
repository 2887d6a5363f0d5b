"""diagnosis.diagnose() over seed-experiment-1 numbers and variations."""

from dataclasses import replace

from tcptop_q import diagnosis
from tcptop_q.diagnosis import CRIT, OK, WARN, diagnose
from tcptop_q.model import NetnsCounters

from .fake_source import HOST_NS, KEY_8080, KEY_SSH, build_snapshot

SYSCTLS = {"somaxconn": 4096, "tcp_max_syn_backlog": 512, "tcp_syncookies": 1, "tcp_abort_on_overflow": 0}


def _snap_listener(key):
    snap = build_snapshot(3)
    return snap, next(lst for lst in snap.listeners if lst.key == key)


def test_full_accept_queue_with_drops_names_the_process_and_limit():
    snap, lst = _snap_listener(KEY_8080)
    findings = diagnose(lst, sysctls=SYSCTLS, close_wait=snap.close_wait)
    head = findings[0]
    assert head.severity == CRIT
    assert "accept queue full 6/5" in head.text
    assert "pid 1234 (server) is not calling accept() fast enough" in head.text
    assert "backlog 5 from listen() is the limit (somaxconn 4096)" in head.text


def test_depth_equal_to_backlog_is_not_full_yet():
    _, lst = _snap_listener(KEY_8080)
    at_limit = replace(lst, accept_queue=5, drop_rate=0.0, overflow_rate=0.0)
    texts = [f.text for f in diagnose(at_limit, sysctls=SYSCTLS)]
    assert not any("accept queue full" in t for t in texts)
    assert any("at its limit 5/5" in t for t in texts)


def test_full_without_new_drops_is_a_warning():
    _, lst = _snap_listener(KEY_8080)
    quiet = replace(lst, drop_rate=0.0, overflow_rate=0.0, synack_retrans_rate=0.0, children={})
    head = diagnose(quiet, sysctls=SYSCTLS)[0]
    assert head.severity == WARN
    assert "no new drops" in head.text


def test_somaxconn_named_when_it_caps_the_backlog():
    _, lst = _snap_listener(KEY_8080)
    capped = replace(lst, backlog=128, accept_queue=129)
    head = diagnose(capped, sysctls={**SYSCTLS, "somaxconn": 128})[0]
    assert "net.core.somaxconn 128 is the limit" in head.text


def test_close_wait_pile_up_says_who_never_calls_close():
    snap, lst = _snap_listener(KEY_8080)
    texts = [f.text for f in diagnose(lst, sysctls=SYSCTLS, close_wait=snap.close_wait)]
    cw = [t for t in texts if "CLOSE_WAIT" in t]
    assert len(cw) == 1
    assert "6 connections in CLOSE_WAIT" in cw[0]
    assert "66 bytes never read" in cw[0]
    assert "pid 1234 (server) never calls close()" in cw[0]


def test_syn_queue_full_without_syncookies_is_critical():
    _, lst = _snap_listener(KEY_SSH)
    flooded = replace(lst, syn_queue=512)
    ns = NetnsCounters(HOST_NS, {}, rates={"TCPReqQFullDrop": 40.0})
    head = diagnose(flooded, sysctls={**SYSCTLS, "tcp_syncookies": 0}, netns=ns)[0]
    assert head.severity == CRIT
    assert "SYN queue 512/128 (tcp_max_syn_backlog 512)" in head.text and "tcp_syncookies=0" in head.text


def test_syncookies_are_pinned_on_the_listener_whose_syn_queue_shows_them():
    _, lst = _snap_listener(KEY_SSH)
    flooded = replace(lst, syn_queue=129)
    ns = NetnsCounters(HOST_NS, {}, rates={"SyncookiesSent": 7.0})
    head = diagnose(flooded, sysctls=SYSCTLS, netns=ns)[0]
    assert head.severity == WARN and "syncookies (netns 7.0/s" in head.text


def test_netns_syncookies_are_not_blamed_on_a_listener_with_an_empty_syn_queue():
    _, lst = _snap_listener(KEY_SSH)
    assert lst.syn_queue == 0 and not lst.synack_retrans_rate
    ns = NetnsCounters(HOST_NS, {}, rates={"SyncookiesSent": 7.0, "TCPReqQFullDrop": 2.0})
    findings = diagnose(lst, sysctls=SYSCTLS, netns=ns)
    assert not any(f.severity in (CRIT, WARN) for f in findings)
    assert any(f.severity == OK and f.text.startswith("healthy") for f in findings)
    netns_line = [f for f in findings if "syncookies" in f.text]
    assert len(netns_line) == 1 and netns_line[0].severity == diagnosis.INFO
    assert "this netns" in netns_line[0].text and "not for this listener" in netns_line[0].text
    assert "SYN-queue-full drops 2.0/s" in netns_line[0].text


def test_close_wait_children_never_accepted_are_not_a_close_leak():
    """inode 0: the child closed while still in the accept queue (a slow acceptor's story)."""
    snap, lst = _snap_listener(KEY_8080)
    queued = [replace(cw, inode=0) for cw in snap.close_wait if cw.lport == 8080]
    assert len(queued) >= diagnosis.CLOSE_WAIT_PILE
    texts = [f.text for f in diagnose(lst, sysctls=SYSCTLS, close_wait=queued)]
    assert not any("never calls close()" in t or "leaked" in t for t in texts)
    line = next(t for t in texts if "closed by the peer" in t)
    assert f"{len(queued)} children closed by the peer before pid 1234 (server) accepted them" in line


def test_healthy_listener_gets_one_ok_finding():
    _, lst = _snap_listener(KEY_SSH)
    findings = diagnose(lst, sysctls=SYSCTLS)
    assert [f.severity for f in findings] == [OK]
    assert findings[0].text.startswith("healthy: accept queue 0/128")


def test_unknown_owner_is_said_plainly():
    _, lst = _snap_listener(KEY_8080)
    anon = replace(lst, pid=None, comm=None)
    assert "owning process (unknown" in diagnose(anon, sysctls=SYSCTLS)[0].text


def test_bursts_between_samples_use_peak_depth():
    _, lst = _snap_listener(KEY_8080)
    bursty = replace(lst, accept_queue=0, peak_accept_queue=6)
    head = diagnose(bursty, sysctls=SYSCTLS)[0]
    assert head.severity == CRIT and "peak 6/5" in head.text


def test_diagnosis_module_does_not_import_textual():
    import sys

    src = open(diagnosis.__file__).read()
    assert "textual" not in src.replace("no textual", "")
    assert "tcptop_q.diagnosis" in sys.modules
