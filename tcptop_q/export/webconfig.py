"""`--web-config FILE`: TLS and basic auth in the Prometheus exporter-toolkit's file format.

    tls_server_config:
      cert_file: server.crt        # relative paths are relative to the config file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12           # optional: TLS12 (default) or TLS13
    basic_auth_users:
      prometheus: $2y$10$...       # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')
    http_server_config:
      http2: false                 # accepted, true or false: tcpq-top speaks HTTP/1.1 only
      headers:                     # added to every response; the toolkit's five, blank = unset
        X-Content-Type-Options: nosniff
        X-Frame-Options: deny      # or sameorigin
        Strict-Transport-Security: max-age=31536000

Unknown keys are an error (as in the toolkit): a misspelt `basic_auth_user` must not leave the
exporter open while its owner believes it is protected.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path


class WebConfigError(ValueError):
    pass


TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
HTTP_KEYS = {"http2", "headers"}
# The exporter toolkit's headers (docs/EXPORTER.md, "Security"), and the values each may take
# (None: any one-line string).
HEADERS: dict[str, set[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": {"deny", "sameorigin"},
    "X-Content-Type-Options": {"nosniff"},
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}
NOT_SUPPORTED = {"rate_limit": "rate_limit (put a proxy in front, or let Prometheus' scrape_interval pace it)"}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version"}
CLIENT_AUTH = {"NoClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"}


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    _ok: dict[tuple[str, bytes], bool] = field(default_factory=dict)  # verified (user, sha256(password))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, user: str, password: str) -> bool:
        """bcrypt is slow by design (tens of ms at cost 10): a scrape every few seconds with
        the same credentials is checked once, then by a SHA-256 of the password in memory."""
        want = self.users.get(user)
        if want is None:
            return False
        digest = hashlib.sha256(password.encode()).digest()
        with self._lock:
            cached = self._ok.get((user, digest))
        if cached is not None:
            return cached
        import bcrypt

        try:
            ok = bool(bcrypt.checkpw(password.encode(), want))
        except ValueError:
            ok = False
        with self._lock:
            if len(self._ok) > 256:
                self._ok.clear()
            self._ok[(user, digest)] = ok
        return ok

    @staticmethod
    def same(a: str, b: str) -> bool:
        return hmac.compare_digest(a.encode(), b.encode())


def load(path: str) -> WebConfig:
    """Parse and check the file now (a bad file is a one-line error at start, exit 2)."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise WebConfigError(f"--web-config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise WebConfigError(f"--web-config {path}: not valid YAML: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WebConfigError(f"--web-config {path}: expected a mapping at the top")
    for key, why in NOT_SUPPORTED.items():
        if key in data:
            raise WebConfigError(f"--web-config {path}: {why} is not supported by tcpq-top")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise WebConfigError(f"--web-config {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    base = Path(path).resolve().parent
    cfg = WebConfig()
    tls = data.get("tls_server_config")
    if tls is not None:
        cfg.tls = _tls_context(path, tls, base)
    http = data.get("http_server_config")
    if http is not None:
        cfg.headers = _http_server_config(path, http)
    users = data.get("basic_auth_users")
    if users is not None:
        if not isinstance(users, dict) or not users:
            raise WebConfigError(f"--web-config {path}: basic_auth_users must map user names to bcrypt hashes")
        try:
            import bcrypt
        except ImportError:
            raise WebConfigError(
                f"--web-config {path}: basic_auth_users needs the bcrypt module (Debian: python3-bcrypt)"
            ) from None
        for user, hashed in users.items():
            if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
                raise WebConfigError(f"--web-config {path}: the password of {user!r} is not a bcrypt hash ($2y$...)")
            try:
                bcrypt.checkpw(b"", hashed.encode())
            except ValueError:
                raise WebConfigError(f"--web-config {path}: the bcrypt hash of {user!r} is malformed") from None
            cfg.users[str(user)] = hashed.encode()
    return cfg


def _http_server_config(path: str, http: object) -> dict[str, str]:
    if not isinstance(http, dict):
        raise WebConfigError(f"--web-config {path}: http_server_config must be a mapping")
    unknown = set(http) - HTTP_KEYS
    if unknown:
        raise WebConfigError(f"--web-config {path}: unknown http_server_config key(s) {', '.join(sorted(map(str, unknown)))}")
    if "http2" in http and not isinstance(http["http2"], bool):
        raise WebConfigError(f"--web-config {path}: http_server_config.http2 must be true or false")
    headers = http.get("headers")
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"--web-config {path}: http_server_config.headers must map header names to values")
    out: dict[str, str] = {}
    canonical = {name.lower(): name for name in HEADERS}
    for name, value in headers.items():
        known = canonical.get(str(name).lower())
        if known is None:
            raise WebConfigError(f"--web-config {path}: header {name!r} is not one of {', '.join(HEADERS)}")
        if value is None or value == "":
            continue  # blank: unset, as in the toolkit
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            raise WebConfigError(f"--web-config {path}: header {known} must be a one-line string")
        allowed = HEADERS[known]
        if allowed is not None and value.lower() not in allowed:
            raise WebConfigError(f"--web-config {path}: header {known} must be {' or '.join(sorted(allowed))}, not {value!r}")
        out[known] = value
    return out


def _tls_context(path: str, tls: object, base: Path) -> ssl.SSLContext:
    if not isinstance(tls, dict):
        raise WebConfigError(f"--web-config {path}: tls_server_config must be a mapping")
    unknown = set(tls) - TLS_KEYS
    if unknown:
        raise WebConfigError(f"--web-config {path}: unknown tls_server_config key(s) {', '.join(sorted(map(str, unknown)))}")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        raise WebConfigError(f"--web-config {path}: tls_server_config needs cert_file and key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    version = tls.get("min_version", "TLS12")
    if version not in ("TLS12", "TLS13"):
        raise WebConfigError(f"--web-config {path}: min_version must be TLS12 or TLS13, not {version!r}")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if version == "TLS13" else ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(base / cert), str(base / key))
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"--web-config {path}: cannot load {cert}/{key}: {getattr(exc, 'strerror', None) or exc}") from None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        raise WebConfigError(f"--web-config {path}: client_auth_type {auth!r} is not one of {', '.join(sorted(CLIENT_AUTH))}")
    if auth != "NoClientCert":
        ca = tls.get("client_ca_file")
        if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not ca:
            raise WebConfigError(f"--web-config {path}: client_auth_type {auth} needs client_ca_file")
        if ca:
            try:
                ctx.load_verify_locations(str(base / ca))
            except (OSError, ssl.SSLError) as exc:
                raise WebConfigError(f"--web-config {path}: cannot load client_ca_file {ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if auth.startswith("Require") else ssl.CERT_OPTIONAL
        if auth == "RequireAnyClientCert":
            raise WebConfigError(f"--web-config {path}: RequireAnyClientCert (unverified client certificates) is not supported")
    return ctx
