"""JSON encoding and decoding derived from the model's dataclass fields and their types.

One place turns a model record into JSON and back: `model.snapshot_to_json` (the `--json`
contract) and the recording codec (tcptop_q/record.py) both use it, so a new Listener field is
in the JSON and in recordings as soon as it is in the dataclass (docs/ARCHITECTURE.md,
"Adding a metric").

A field's JSON shape comes from its annotation:

    int, float, str, bool        the value (float() applied to a float field, so it is never written as an int)
    X | None                     null, or X
    Mapping[K, V]                an object; keys and values decoded as K and V
    tuple[X, ...], Sequence[X]   an array (decoded as a tuple)
    tuple[X, Y]                  an array of fixed length
    a dataclass / NamedTuple     an object of its own fields

and from the field's metadata (`dataclasses.field(metadata=...)`):

    "json": False                never written, not read (the default value is used)
    "json": "record"             written only into recordings, not into the `--json` contract
    "json": "inline"             a NamedTuple/dataclass whose fields are written into the parent object
    "json_name": "..."           the JSON name when it differs from the field's
    "json_aliases": ("...",)     extra names written with the same value (deprecated names kept for
                                 old readers) and read when the main name is missing (old recordings)

A field missing from the JSON takes its default (old recordings lack newer fields); a missing
field without a default is an error (KeyError), which the caller turns into a one-line message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

Conv = Callable[[Any], Any]

_MISSING = object()


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or _is_namedtuple(tp))


def _field_specs(cls: type) -> list[tuple[str, Any, Mapping[str, Any], Any]]:
    """(name, resolved type, metadata, default or _MISSING) of each field of a dataclass or NamedTuple."""
    hints = typing.get_type_hints(cls)
    if _is_namedtuple(cls):
        defaults = cls._field_defaults  # type: ignore[attr-defined]
        return [(n, hints[n], {}, defaults.get(n, _MISSING)) for n in cls._fields]  # type: ignore[attr-defined]
    out: list[tuple[str, Any, Mapping[str, Any], Any]] = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        else:
            default = _MISSING
        out.append((f.name, hints[f.name], f.metadata, default))
    return out


# The encoder and decoder of each class are generated once as Python source from its fields
# (then cached): as fast as hand-written code, which matters at 10k listeners per tick.


def _scalar(tp: Any) -> type | None:
    """int/float/str/bool for those types and for `X | None` of them; None otherwise."""
    if tp in (int, float, str, bool):
        return tp  # type: ignore[no-any-return]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and inner[0] in (int, float, str, bool):
            return inner[0]  # type: ignore[no-any-return]
    return None


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _compile(name: str, src: str, env: dict[str, Any]) -> Callable[..., Any]:
    exec(compile(src, f"<tcptop_q.codec {name}>", "exec"), env)  # noqa: S102 (our own generated source)
    return env[name]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- encoding


def _encoder(tp: Any) -> Conv | None:
    """How to turn a value of type `tp` into JSON; None = as it is (int, str, bool, and
    `X | None` of a scalar: such a value is already what JSON writes)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is float:
        return float
    if tp in (int, str, bool, type(None)) or (_optional(tp) and _scalar(tp) is not None):
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"no JSON encoding for {tp!r}")
        enc = _encoder(inner[0])
        if enc is None:
            return None
        return lambda v: None if v is None else enc(v)
    if origin in (Mapping, dict):
        venc = _encoder(args[1])
        if venc is None:
            return dict
        return lambda v: {k: venc(x) for k, x in v.items()}
    if origin in (tuple, Sequence, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            encs = [_encoder(a) for a in args]
            return lambda v: [x if e is None else e(x) for e, x in zip(encs, v, strict=True)]
        eenc = _encoder(args[0])
        if eenc is None:
            return list
        return lambda v: [eenc(x) for x in v]
    if _is_record(tp):
        return encoder(tp)
    raise TypeError(f"no JSON encoding for {tp!r}")


_ENCODERS: dict[tuple[type, bool], Callable[[Any], dict]] = {}


def _encode_items(cls: type, record: bool, base: str, env: dict[str, Any]) -> list[str]:
    """`"json name": expression` entries of a dict display writing `base` (a cls) as JSON."""
    items: list[str] = []
    for name, tp, meta, _default in _field_specs(cls):
        mode = meta.get("json", True)
        if mode is False or (mode == "record" and not record):
            continue
        value = f"{base}.{name}"
        if mode == "inline":
            items += _encode_items(tp, record, value, env)
            continue
        conv = _encoder(tp)
        if conv is None:
            expr = value
        elif conv in (float, dict, list):
            expr = f"{conv.__name__}({value})"
        else:
            ref = f"c{len(env)}"
            env[ref] = conv
            expr = f"{ref}({value})"
        for json_name in (meta.get("json_name", name), *meta.get("json_aliases", ())):
            items.append(f"{json_name!r}: {expr}")
    return items


def encoder(cls: type, *, record: bool = False) -> Callable[[Any], dict]:
    """A function writing one `cls` as a JSON object (record=True: the recording's fuller form)."""
    cached = _ENCODERS.get((cls, record))
    if cached is not None:
        return cached
    env: dict[str, Any] = {}
    items = _encode_items(cls, record, "obj", env)
    encode = _compile("encode", "def encode(obj):\n    return {" + ", ".join(items) + "}\n", env)
    _ENCODERS[(cls, record)] = encode
    return encode


def to_json(obj: Any, *, record: bool = False) -> dict:
    return encoder(type(obj), record=record)(obj)


# ---------------------------------------------------------------- decoding


def _decoder(tp: Any) -> Conv:
    """How to read a JSON value as type `tp` (int("3") and float(3) accepted, as json gives them)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (int, float, str, bool):
        return tp  # type: ignore[no-any-return]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"no JSON decoding for {tp!r}")
        dec = _decoder(inner[0])
        return lambda v: None if v is None else dec(v)
    if origin in (Mapping, dict):
        kdec, vdec = _decoder(args[0]), _decoder(args[1])
        return lambda v: {kdec(k): vdec(x) for k, x in v.items()}
    if origin in (tuple, Sequence, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            decs = [_decoder(a) for a in args]
            return lambda v: tuple(d(x) for d, x in zip(decs, v, strict=True))
        edec = _decoder(args[0])
        return lambda v: tuple(edec(x) for x in v)
    if _is_record(tp):
        return decoder(tp)
    raise TypeError(f"no JSON decoding for {tp!r}")


_DECODERS: dict[type, Callable[[Mapping[str, Any]], Any]] = {}


def _decode_expr(tp: Any, var: str, env: dict[str, Any]) -> str:
    """An expression reading the JSON value in variable `var` as type `tp`."""
    scalar = _scalar(tp)
    if scalar is not None:
        call = f"{scalar.__name__}({var})"
        return f"(None if {var} is None else {call})" if _optional(tp) else call
    ref = f"c{len(env)}"
    env[ref] = _decoder(tp)
    return f"{ref}({var})"


def decoder(cls: type) -> Callable[[Mapping[str, Any]], Any]:
    """A function reading one `cls` from a JSON object (contract or recording form)."""
    cached = _DECODERS.get(cls)
    if cached is not None:
        return cached
    env: dict[str, Any] = {"cls": cls, "MISSING": _MISSING}
    lines = ["def decode(d):", "    get = d.get", "    kw = {}"]
    for name, tp, meta, default in _field_specs(cls):
        mode = meta.get("json", True)
        if mode is False:
            if default is _MISSING:
                raise TypeError(f"{cls.__name__}.{name} is left out of JSON but has no default")
            continue
        if mode == "inline":
            ref = f"c{len(env)}"
            env[ref] = decoder(tp)
            lines.append(f"    kw[{name!r}] = {ref}(d)")
            continue
        names = (meta.get("json_name", name), *meta.get("json_aliases", ()))
        lines.append(f"    v = get({names[0]!r}, MISSING)")
        for alias in names[1:]:  # old names, read when the new one is missing
            lines.append(f"    if v is MISSING: v = get({alias!r}, MISSING)")
        if default is _MISSING:
            lines.append(f"    if v is MISSING: raise KeyError({names[0]!r})")
            lines.append(f"    kw[{name!r}] = {_decode_expr(tp, 'v', env)}")
        else:  # missing: the field's default (a reading written before the field existed)
            lines.append(f"    if v is not MISSING: kw[{name!r}] = {_decode_expr(tp, 'v', env)}")
    lines.append("    return cls(**kw)")
    decode = _compile("decode", "\n".join(lines) + "\n", env)
    _DECODERS[cls] = decode
    return decode


def from_json(cls: type, d: Mapping[str, Any]) -> Any:
    return decoder(cls)(d)
