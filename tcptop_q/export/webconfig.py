"""`--web-config FILE`: TLS and basic auth in the Prometheus exporter-toolkit's file format.

    tls_server_config:
      cert_file: server.crt        # relative paths are relative to the config file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12           # optional: TLS12 (default) or TLS13
    basic_auth_users:
      prometheus: $2y$10$...       # bcrypt hashes (htpasswd -nBC 10 "" | tr -d ':\\n')

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


TOP_KEYS = {"tls_server_config", "basic_auth_users"}  # http_server_config: not supported (an error)
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version"}
CLIENT_AUTH = {"NoClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"}


@dataclass
class WebConfig:
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
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
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise WebConfigError(f"--web-config {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    base = Path(path).resolve().parent
    cfg = WebConfig()
    tls = data.get("tls_server_config")
    if tls is not None:
        cfg.tls = _tls_context(path, tls, base)
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
