"""`--serve` bad input: one line naming the problem, exit 2, never a traceback; checked before
anything is loaded (no root needed)."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import tcpq

HASH = "$2y$10$Hig.N1quxZ3t8rh81Wjrte8EEvKmz5tUipEOJhLWXFMscv.1UBAXK"  # bcrypt("secret")

FLAG_CASES = [
    (["--serve", ":9100"], ":9100"),
    (["--serve", "localhost:9100"], "localhost"),
    (["--serve", "::1:9100"], "brackets"),
    (["--serve", "127.0.0.1:99999"], "port"),
    (["--serve", "9100", "--once"], "not allowed"),
    (["--serve", "9100", "--json"], "--json"),
    (["--serve", "9100", "--replay", "x.gz"], "--replay"),
    (["--max-listeners", "10"], "--serve"),
    (["--web-config", "w.yml"], "--serve"),
    (["--serve", "0", "--max-listeners", "0"], "--max-listeners"),
    (["--serve", "0", "--max-listeners", "lots"], "--max-listeners"),
    (["--serve", "0", "--web-config", "/nonexistent/web.yml"], "/nonexistent/web.yml"),
]


@pytest.mark.parametrize("argv, names", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_serve_flags(argv, names):
    proc = tcpq(*argv, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert names in proc.stderr, proc.stderr


WEB_CASES = [
    ("tls_server_config: [oops\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("basic_auth_user:\n  prom: x\n", "unknown key"),
    ("basic_auth_users:\n  prom: plaintext\n", "not a bcrypt hash"),
    ("basic_auth_users:\n  prom: '$2y$10$short'\n", "malformed"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "missing.crt"),
    ("tls_server_config:\n  cert_file: a.crt\n", "key_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n", "min_version"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n", "cipher_suites"),
    ("http_server_config:\n  http3: true\n", "unknown http_server_config key"),
    ("http_server_config:\n  http2: maybe\n", "http2 must be true or false"),
    ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "'X-Powered-By' is not one of"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "X-Frame-Options must be deny or sameorigin"),
    ("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n", "must be nosniff"),
    ("http_server_config:\n  headers:\n    Content-Security-Policy: [a]\n", "one-line string"),
    ("http_server_config:\n  headers: [a]\n", "headers must map"),
    ("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit"),
]


@pytest.mark.parametrize("text, names", WEB_CASES, ids=[c[1] for c in WEB_CASES])
def test_bad_web_config(tmp_path, text, names):
    path = tmp_path / "web.yml"
    path.write_text(text)
    proc = tcpq("--serve", "127.0.0.1:0", "--no-bpf", "--web-config", str(path), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert names in proc.stderr and str(path) in proc.stderr, proc.stderr


def test_unreadable_web_config(tmp_path):
    proc = tcpq("--serve", "127.0.0.1:0", "--no-bpf", "--web-config", str(tmp_path), timeout=30)  # a directory
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = tcpq("--serve", f"127.0.0.1:{port}", "--no-bpf", timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"tcpq-top: --serve 127.0.0.1:{port}: Address already in use", proc.stderr


def test_a_valid_hash_is_accepted_by_the_loader(tmp_path):
    from tcptop_q.export import webconfig

    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: '{HASH}'\n")
    cfg = webconfig.load(str(path))
    assert cfg.check("prom", "secret") and not cfg.check("prom", "Secret") and not cfg.check("other", "secret")
    assert cfg.check("prom", "secret")  # the cached path answers the same


def test_http_server_config_headers_are_loaded_blank_unset_http2_accepted(tmp_path):
    from tcptop_q.export import webconfig

    path = tmp_path / "web.yml"
    path.write_text("http_server_config:\n  http2: true\n  headers:\n    x-content-type-options: nosniff\n"
                    "    X-Frame-Options: SAMEORIGIN\n    Content-Security-Policy: ''\n"
                    "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n")
    cfg = webconfig.load(str(path))
    assert cfg.headers == {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN",
                           "Strict-Transport-Security": "max-age=31536000; includeSubDomains"}
