"""tracefs: where it is mounted, and what a tracepoint's format file says.

Hooks are chosen from these files, never from kernel version numbers:
distributions backport tracepoints and fields, and enum values (drop reasons)
are renumbered between releases, so names are decoded from __print_symbolic.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class TracefsError(Exception):
    pass


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except PermissionError:
        raise TracefsError(f"cannot read {path}: permission denied (needs root)") from None
    except OSError:
        return False


def tracefs_root(mount: bool = True) -> Path:
    for path in _CANDIDATES:
        if _is_dir(path / "events"):
            return path
    if mount and os.geteuid() == 0:
        target = _CANDIDATES[0]
        try:
            subprocess.run(
                ["mount", "-t", "tracefs", "nodev", str(target)],
                check=True,
                capture_output=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TracefsError(f"tracefs not mounted and mounting it failed: {exc}") from None
        if _is_dir(target / "events"):
            return target
    raise TracefsError("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)")


@dataclass(frozen=True)
class TpField:
    name: str
    ctype: str  # as written in the format file, without the name
    offset: int
    size: int
    signed: bool
    array_len: int  # 0 when not an array


@dataclass(frozen=True)
class TpFormat:
    category: str
    event: str
    fields: dict[str, TpField]
    print_fmt: str
    source: str = "tracefs"  # or "btf" when the format file could not be read (not root)
    enums: dict[str, dict[int, str]] = field(default_factory=dict)  # field -> names, BTF source only

    @property
    def hook(self) -> str:
        return f"tracepoint:{self.category}:{self.event}"

    @property
    def size(self) -> int:
        return max((f.offset + f.size for f in self.fields.values()), default=8)

    def symbols(self, field: str) -> dict[int, str]:
        """The {value: name} table of __print_symbolic(REC->field, ...), {} if there is none."""
        if field in self.enums:
            return dict(self.enums[field])
        start = self.print_fmt.find(f"__print_symbolic(REC->{field},")
        if start < 0:
            return {}
        depth = 0
        end = start
        for i in range(start, len(self.print_fmt)):
            c = self.print_fmt[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        body = self.print_fmt[start:end]
        return {int(num, 0): name for num, name in re.findall(r'\{\s*(-?(?:0x)?[0-9a-fA-F]+)\s*,\s*"([^"]*)"\s*\}', body)}


_FIELD_RE = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d+);")


def parse_format(category: str, event: str, text: str) -> TpFormat:
    fields: dict[str, TpField] = {}
    for m in _FIELD_RE.finditer(text):
        decl = m.group("decl").strip()
        arr = 0
        am = re.search(r"\[(\d*)\]\s*$", decl)
        if am:
            arr = int(am.group(1) or 0)
            decl = decl[: am.start()].rstrip()
        nm = re.search(r"([A-Za-z_][A-Za-z0-9_]*)$", decl)
        if not nm:
            continue
        name = nm.group(1)
        ctype = decl[: nm.start()].strip()
        fields[name] = TpField(name, ctype, int(m.group(2)), int(m.group(3)), m.group(4) == "1", arr)
    pm = re.search(r"^print fmt:\s*(.*)$", text, re.M | re.S)
    return TpFormat(category, event, fields, pm.group(1) if pm else "")


def read_format(category: str, event: str, root: Path | None = None) -> TpFormat | None:
    """None when this kernel has no such tracepoint."""
    root = root or tracefs_root()
    try:
        text = (root / "events" / category / event / "format").read_text()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise TracefsError(f"cannot read {category}:{event} format: permission denied") from None
    return parse_format(category, event, text)


def kprobes_available(root: Path | None = None) -> bool:
    root = root or tracefs_root(mount=False)
    try:
        return (root / "kprobe_events").exists()
    except OSError:
        return False


# Events declared with DEFINE_EVENT have no struct of their own: BTF holds their event
# class's trace_event_raw_<class>. tcp_receive_reset is of class tcp_event_sk (the 6.18
# format file and that struct agree field by field, tests/compat/fixtures/6.18);
# tcp_send_reset was of class tcp_event_sk_skb before it got its own layout.
BTF_EVENT_CLASSES = {"tcp_receive_reset": ("tcp_event_sk",), "tcp_send_reset": ("tcp_event_sk_skb",)}


def btf_struct_names(event: str) -> tuple[str, ...]:
    """BTF structs that may hold an event's layout: its own first, then its event class's."""
    return (f"trace_event_raw_{event}",) + tuple(f"trace_event_raw_{c}" for c in BTF_EVENT_CLASSES.get(event, ()))


def format_from_btf(btf, category: str, event: str, enum_fields: dict[str, tuple[str, str]] | None = None) -> TpFormat | None:
    """A tracepoint's layout from BTF's struct trace_event_raw_<event>, for when tracefs
    is unreadable (e.g. `tcpq-top --ebpf` without root). The kernel builds the format
    file from that very struct; enum_fields maps a field to (enum name, prefix to strip)
    to stand in for __print_symbolic. Existence is still decided by tracefs at load.
    """
    from .btf import BtfError

    members = None
    for struct_name in btf_struct_names(event):
        try:
            members = btf.layout(struct_name)
            break
        except BtfError:
            continue
    if members is None:
        return None
    fields: dict[str, TpField] = {}
    for name, offset, size, arr, is_ptr, signed in members:
        if name in ("ent", "__data") or not size:
            continue
        ctype = "void *" if is_ptr else ("int" if signed else "unsigned")
        fields[name] = TpField(name, ctype, offset, size, signed, arr)
    enums: dict[str, dict[int, str]] = {}
    for fname, (enum_name, prefix) in (enum_fields or {}).items():
        try:
            values = btf.enum_values(enum_name)
        except BtfError:
            continue
        enums[fname] = {v: n[len(prefix):] if n.startswith(prefix) else n for v, n in values.items()}
    return TpFormat(category, event, fields, "", source="btf", enums=enums)
