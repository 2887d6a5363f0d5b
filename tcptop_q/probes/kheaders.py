"""Find kernel headers bcc can compile against, without touching /lib/modules.

Our programs read kernel structs only through BTF offsets and tracepoint
arguments through structs generated from the tracefs format files, so any
reasonably recent Linux header tree works (docs/ARCHITECTURE.md). Debian splits one tree
in two folders (-common and -<arch>); bcc wants one, so we build a merged tree
of symlinks in a cache dir and point BCC_KERNEL_SOURCE at it.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

_SRC = Path("/usr/src")


def cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/tcpq-top")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tcpq-top"


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _is_tree(path: Path) -> bool:
    return (path / "include" / "linux" / "kconfig.h").exists() and (
        path / "include" / "generated" / "autoconf.h"
    ).exists()


def _merge(dst: Path, sources: list[Path]) -> None:
    """dst gets one symlink per entry; entries that are dirs in several sources are merged."""
    dst.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[Path]] = {}
    for src in sources:
        for entry in sorted(src.iterdir()):
            names.setdefault(entry.name, []).append(entry)
    for name, entries in names.items():
        target = dst / name
        dirs = [e for e in entries if e.is_dir()]
        if len(dirs) > 1:
            _merge(target, dirs)
        elif not target.exists() and not target.is_symlink():
            target.symlink_to(entries[-1].resolve() if entries[-1].is_symlink() else entries[-1])


def find_kernel_source() -> tuple[str | None, str]:
    """(path for BCC_KERNEL_SOURCE or None when bcc's default works, description); raises OSError if none."""
    release = platform.release()
    if os.environ.get("BCC_KERNEL_SOURCE") and _is_tree(Path(os.environ["BCC_KERNEL_SOURCE"])):
        return os.environ["BCC_KERNEL_SOURCE"], "BCC_KERNEL_SOURCE"
    build = Path("/lib/modules") / release / "build"
    if _is_tree(build) or (build / "include" / "generated" / "autoconf.h").exists():
        return None, f"headers for {release}"
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return None, "/sys/kernel/kheaders.tar.xz"
    # Debian/Ubuntu: linux-headers-X-common + linux-headers-X-<flavour>; pick the newest pair.
    candidates = []
    if _SRC.is_dir():
        for flavour in _SRC.glob("linux-headers-*"):
            gen = flavour / "include" / "generated" / "autoconf.h"
            if not gen.exists():
                continue
            stem = re.sub(r"-[a-z0-9_]+$", "", flavour.name)
            common = _SRC / f"{stem}-common"
            sources = [common, flavour] if common.is_dir() else [flavour]
            candidates.append((_version_key(flavour.name), flavour.name, sources))
    if not candidates:
        raise OSError(f"no kernel headers found (none for {release} and none in /usr/src)")
    candidates.sort()
    _, name, sources = candidates[-1]
    if len(sources) == 1 and _is_tree(sources[0]):
        return str(sources[0]), name
    merged = cache_dir() / "kernel-src" / name
    if not _is_tree(merged):
        tmp = merged.with_name(merged.name + f".tmp{os.getpid()}")
        _merge(tmp, sources)
        try:
            tmp.rename(merged)
        except OSError:  # another process won the race, or a stale tree: keep theirs / replace
            import shutil

            if _is_tree(merged):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(merged, ignore_errors=True)
                tmp.rename(merged)
    return str(merged), f"{name} (merged in {merged})"
