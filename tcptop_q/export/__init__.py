"""`tcpq-top --serve`: a Prometheus exporter of the per-listener numbers (docs/EXPORTER.md).

This module only parses the command line's address (no prometheus_client import), so the
rest of the command line works where the exporter's dependencies are not installed.
"""

from __future__ import annotations

import ipaddress

DEFAULT_HOST = "127.0.0.1"


def parse_listen_address(text: str) -> tuple[str, int]:
    """`PORT`, `ADDR:PORT` or `[IPv6]:PORT` -> (host, port). PORT 0: the kernel picks one.

    Raises ValueError with a one-line reason. A bare `:PORT` is refused rather than read as
    "every interface" (Go's meaning) or loopback: the address is the user's explicit choice.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError(f"--serve {text!r}: [{host}] is not an IPv6 address") from None
    elif host == "":
        raise ValueError(f"--serve {text!r}: give the address too, e.g. 127.0.0.1{text} (or 0.0.0.0{text} for every interface)")
    elif ":" in host:
        raise ValueError(f"--serve {text!r}: write an IPv6 address in brackets, e.g. [::1]:9100")
    else:
        try:
            if ipaddress.ip_address(host).version != 4:
                raise ValueError
        except ValueError:
            raise ValueError(f"--serve {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--serve {text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)
