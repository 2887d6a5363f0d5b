"""vm/apt_source.py: the VM image's package source comes from the host's apt configuration
(one-line .list entries and deb822 .sources stanzas), never from an address in the project.
Root-free: each test writes its own etc/apt tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "vm"))
import apt_source  # noqa: E402

# Made-up hosts (.example is reserved): the parser must return what the file says.
DEB822 = """Types: deb
# a comment line inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _etc(tmp_path: Path, files: dict[str, str]) -> Path:
    d = tmp_path / "etc/apt/sources.list.d"
    d.mkdir(parents=True)
    for name, text in files.items():
        (tmp_path / "etc/apt" / name).write_text(text)
    return tmp_path


def test_deb822_stanzas(tmp_path: Path) -> None:
    root = _etc(tmp_path, {"sources.list.d/debian.sources": DEB822})
    srcs = apt_source.host_sources(root)
    assert apt_source.uri_for(srcs, "bookworm") == "http://mirror.example/debian"
    assert apt_source.uri_for(srcs, "bookworm-security") == "http://mirror.example/debian-security"


def test_one_line_entries_with_options_and_comments(tmp_path: Path) -> None:
    root = _etc(tmp_path, {"sources.list": (
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://mirror.example/debian/ bookworm main contrib\n"
        "deb http://sec.example/debian-security bookworm-security main # trailing comment\n")})
    srcs = apt_source.host_sources(root)
    assert apt_source.uri_for(srcs, "bookworm") == "https://mirror.example/debian"  # not deb-src, no trailing /
    assert apt_source.uri_for(srcs, "bookworm-security") == "http://sec.example/debian-security"


def test_disabled_and_foreign_sources_are_not_taken(tmp_path: Path) -> None:
    root = _etc(tmp_path, {
        "sources.list.d/a-off.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\n"
                                        "Components: main\nEnabled: no\n",
        "sources.list.d/b-node.sources": "Types: deb\nURIs: https://node.example/node_20.x\nSuites: nodistro\n"
                                         "Components: main\n",
        "sources.list.d/c-cloud.list.disabled-by-admin": "deb http://cloud.example/apt bookworm main\n",
        "sources.list.d/d-contrib.list": "deb http://contrib.example/debian bookworm contrib\n",
        "sources.list.d/e-debian.sources": DEB822,
    })
    assert apt_source.uri_for(apt_source.host_sources(root), "bookworm") == "http://mirror.example/debian"


def test_no_source_is_one_line_and_exit_1(tmp_path: Path) -> None:
    root = _etc(tmp_path, {"sources.list": "deb http://mirror.example/debian bookworm main\n"})
    ok = subprocess.run([sys.executable, str(HERE / "vm/apt_source.py"), "debian", str(root)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "http://mirror.example/debian\n"
    missing = subprocess.run([sys.executable, str(HERE / "vm/apt_source.py"), "security", str(root)],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "bookworm-security" in missing.stderr
    bad = subprocess.run([sys.executable, str(HERE / "vm/apt_source.py"), "ubuntu"], capture_output=True, text=True)
    assert bad.returncode == 2


@pytest.mark.parametrize("script", ["build.sh", "run.sh", "guest-init.sh"])
def test_no_fixed_package_address_in_the_vm_scripts(script: str) -> None:
    text = (HERE / "vm" / script).read_text()
    assert "http://" not in text and "https://" not in text
