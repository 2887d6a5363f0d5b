"""Which Debian package source the test VM image is built from: the host's own apt
configuration (/etc/apt/sources.list, sources.list.d/*.list one-line entries and
sources.list.d/*.sources deb822 stanzas), never an address written into the project.

    python3 apt_source.py debian      # URI serving the suite `bookworm` (also bullseye's kernel)
    python3 apt_source.py security    # URI serving `bookworm-security`

Prints the URI, or one line on stderr and exit 1 when the host has no such source.
Only the standard library: vm/build.sh runs it with the host's /usr/bin/python3.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

SUITES = {"debian": "bookworm", "security": "bookworm-security"}


@dataclass(frozen=True)
class Source:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    origin: str  # file it came from, for messages


def parse_one_line(text: str, origin: str = "") -> list[Source]:
    """`deb [arch=amd64 signed-by=...] URI SUITE COMPONENT...` lines."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        kind, rest = words[0], words[1:]
        if kind not in ("deb", "deb-src"):
            continue
        if rest and rest[0].startswith("["):  # options: up to the word ending with ]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) < 2:
            continue
        out.append(Source((kind,), (rest[0],), (rest[1],), tuple(rest[2:]), origin))
    return out


def parse_deb822(text: str, origin: str = "") -> list[Source]:
    """deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Components:`, `Enabled: no`)."""
    out = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        fields = {k: tuple(stanza.get(k, "").split()) for k in ("types", "uris", "suites", "components")}
        if fields["types"] and fields["uris"] and fields["suites"]:
            out.append(Source(fields["types"], fields["uris"], fields["suites"], fields["components"], origin))
    return out


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
            continue
        if raw[0] in " \t" and key:  # continuation line
            cur[key] += " " + raw.strip()
            continue
        if ":" in raw:
            k, v = raw.split(":", 1)
            key = k.strip().lower()
            cur[key] = v.strip()
    return stanzas


def host_sources(root: Path = Path("/")) -> list[Source]:
    """Every enabled entry of the apt configuration under ROOT, in apt's file order."""
    etc = root / "etc/apt"
    out: list[Source] = []
    main = etc / "sources.list"
    if main.is_file():
        out += parse_one_line(main.read_text(errors="replace"), str(main))
    d = etc / "sources.list.d"
    for f in sorted(d.iterdir()) if d.is_dir() else []:
        if f.suffix == ".list":
            out += parse_one_line(f.read_text(errors="replace"), str(f))
        elif f.suffix == ".sources":
            out += parse_deb822(f.read_text(errors="replace"), str(f))
    return out


def uri_for(sources: list[Source], suite: str) -> str | None:
    """First binary (`deb`) source serving SUITE with component main."""
    for s in sources:
        if "deb" in s.types and suite in s.suites and (not s.components or "main" in s.components):
            return s.uris[0].rstrip("/")
    return None


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[1] not in SUITES:
        print("usage: apt_source.py debian|security [ROOT]", file=sys.stderr)
        return 2
    root = Path(argv[2]) if len(argv) == 3 else Path("/")
    suite = SUITES[argv[1]]
    uri = uri_for(host_sources(root), suite)
    if uri is None:
        print(f"apt_source.py: no deb source for suite {suite} in {root / 'etc/apt'}", file=sys.stderr)
        return 1
    print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
