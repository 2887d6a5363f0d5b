"""A small reader of the kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets.

Our BPF programs never include kernel struct definitions; they read fields at
byte offsets resolved here at start-up and passed as -D cflags, so one program
text works on every kernel that has BTF, whatever headers bcc compiles against.
Format: Documentation/bpf/btf.rst (struct btf_header, struct btf_type + kind data).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

BTF_MAGIC = 0xEB9F
KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF = range(1, 9)
KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = range(9, 16)
KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = range(16, 20)
_MODIFIERS = (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)


class BtfError(Exception):
    pass


@dataclass(frozen=True)
class Field:
    offset: int  # bytes from the start of the outermost struct
    size: int  # bytes of the (resolved) member type


class Btf:
    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError("not a little-endian BTF blob")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        # type id -> (offset of its btf_type in data); id 0 is void.
        self._offs: list[int] = [0]
        self._by_name: dict[str, list[int]] = {}
        pos = hdr_len + type_off
        end = pos + type_len
        unpack = struct.unpack_from
        offs = self._offs
        by_name = self._by_name
        while pos < end:
            name_off, info, _size = unpack("<III", data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            offs.append(pos)
            if kind in (KIND_STRUCT, KIND_UNION, KIND_TYPEDEF, KIND_ENUM, KIND_ENUM64) and name_off:
                by_name.setdefault(self._str(name_off), []).append(len(offs) - 1)
            pos += 12
            if kind in (KIND_INT, KIND_VAR, KIND_DECL_TAG):
                pos += 4
            elif kind == KIND_ARRAY:
                pos += 12
            elif kind in (KIND_STRUCT, KIND_UNION, KIND_DATASEC, KIND_ENUM64):
                pos += 12 * vlen
            elif kind in (KIND_ENUM, KIND_FUNC_PROTO):
                pos += 8 * vlen

    @classmethod
    def vmlinux(cls, path: Path = VMLINUX) -> Btf:
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            raise BtfError(f"no BTF at {path} (kernel built without CONFIG_DEBUG_INFO_BTF)") from None
        except PermissionError:
            raise BtfError(f"cannot read {path}: permission denied") from None

    def _str(self, off: int) -> str:
        end = self._data.index(b"\0", self._strs + off)
        return self._data[self._strs + off : end].decode()

    def _type(self, tid: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, name_off)"""
        pos = self._offs[tid]
        name_off, info, size = struct.unpack_from("<III", self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size, name_off

    def _resolve(self, tid: int) -> int:
        while True:
            kind, _v, _k, ref, _n = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = ref

    def size_of(self, tid: int) -> int:
        tid = self._resolve(tid)
        kind, _v, _k, size, _n = self._type(tid)
        if kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return size
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem, _idx, nelems = struct.unpack_from("<III", self._data, self._offs[tid] + 12)
            return self.size_of(elem) * nelems
        raise BtfError(f"type {tid} (kind {kind}) has no size")

    def struct_id(self, name: str) -> int:
        for tid in self._by_name.get(name, []):
            kind, vlen, _k, _s, _n = self._type(tid)
            if kind in (KIND_STRUCT, KIND_UNION) and vlen:
                return tid
            if kind == KIND_TYPEDEF:
                res = self._resolve(tid)
                if self._type(res)[0] in (KIND_STRUCT, KIND_UNION):
                    return res
        raise BtfError(f"struct {name} not in BTF")

    def _members(self, tid: int):
        kind, vlen, kflag, _s, _n = self._type(tid)
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BtfError(f"type {tid} is not a struct/union")
        base = self._offs[tid] + 12
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._data, base + 12 * i)
            bit_off = moff & 0xFFFFFF if kflag else moff
            yield (self._str(name_off) if name_off else ""), mtype, bit_off

    def _find_member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(member type id, bit offset), looking through anonymous structs/unions."""
        for mname, mtype, bit_off in self._members(tid):
            if mname == name:
                return mtype, bit_off
            if not mname:
                inner = self._resolve(mtype)
                if self._type(inner)[0] in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, name)
                    if found:
                        return found[0], bit_off + found[1]
        return None

    def field(self, struct_name: str, path: str) -> Field:
        """Offset of e.g. field("sock", "__sk_common.skc_net.net") from the start of struct sock."""
        tid = self.struct_id(struct_name)
        bits = 0
        mtype = tid
        for part in path.split("."):
            found = self._find_member(self._resolve(mtype), part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path}")
            mtype, bit_off = found
            bits += bit_off
        if bits % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield")
        return Field(bits // 8, self.size_of(mtype))

    def has_struct(self, name: str) -> bool:
        try:
            self.struct_id(name)
        except BtfError:
            return False
        return True

    def layout(self, struct_name: str) -> list[tuple[str, int, int, int, bool, bool]]:
        """Top-level members: (name, byte offset, size, array length or 0, is pointer, is signed)."""
        tid = self.struct_id(struct_name)
        out = []
        for name, mtype, bit_off in self._members(tid):
            if bit_off % 8:
                continue
            res = self._resolve(mtype)
            kind, _v, _k, size, _n = self._type(res)
            arr = 0
            signed = False
            if kind == KIND_ARRAY:
                _elem, _idx, arr = struct.unpack_from("<III", self._data, self._offs[res] + 12)
            elif kind == KIND_INT:
                (enc,) = struct.unpack_from("<I", self._data, self._offs[res] + 12)
                signed = bool((enc >> 24) & 1)
            out.append((name, bit_off // 8, self.size_of(mtype), arr, kind == KIND_PTR, signed))
        return out

    def enum_values(self, name: str) -> dict[int, str]:
        for tid in self._by_name.get(name, []):
            kind, vlen, _k, _s, _n = self._type(tid)
            if kind == KIND_ENUM and vlen:
                base = self._offs[tid] + 12
                return {
                    struct.unpack_from("<i", self._data, base + 8 * i + 4)[0]: self._str(
                        struct.unpack_from("<I", self._data, base + 8 * i)[0]
                    )
                    for i in range(vlen)
                }
        raise BtfError(f"enum {name} not in BTF")

    def type_name(self, tid: int) -> str:
        """A C-like spelling of a type without qualifiers: "struct sock *", "int", "enum x", "void *"."""
        tid = self._resolve(tid) if tid else 0
        if not tid:
            return "void"
        kind, _v, _k, ref, name_off = self._type(tid)
        name = self._str(name_off) if name_off else ""
        if kind == KIND_PTR:
            return self.type_name(ref) + " *"
        if kind == KIND_STRUCT:
            return f"struct {name}"
        if kind == KIND_UNION:
            return f"union {name}"
        if kind in (KIND_ENUM, KIND_ENUM64):
            return f"enum {name}"
        if kind == KIND_FWD:
            return f"{'union' if _k else 'struct'} {name}"
        if kind == KIND_FUNC_PROTO:
            return "fn"
        return name or f"kind{kind}"

    def trace_proto(self, event: str) -> list[str]:
        """The arguments a raw tracepoint program gets for `event`, in order: the kernel's
        typedef btf_trace_<event> is `void (*)(void *__data, <TP_PROTO>)` (include/trace/bpf_probe.h);
        the leading `void *` is dropped. BtfError when the typedef is missing (no such event)."""
        for tid in self._by_name.get(f"btf_trace_{event}", []):
            kind, _v, _k, ref, _n = self._type(tid)
            if kind != KIND_TYPEDEF:
                continue
            pkind, _pv, _pk, fn, _pn = self._type(ref)
            if pkind != KIND_PTR:
                break
            fkind, vlen, _fk, _ret, _fn = self._type(fn)
            if fkind != KIND_FUNC_PROTO:
                break
            base = self._offs[fn] + 12
            params = [self.type_name(struct.unpack_from("<II", self._data, base + 8 * i)[1]) for i in range(vlen)]
            if not params or params[0] != "void *":
                break
            return params[1:]
        raise BtfError(f"no btf_trace_{event} prototype in BTF")
