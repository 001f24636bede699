"""Avro writers compiled from the schemas, for the records altlas writes most.

fastavro's writer walks the schema for every record it writes: a dispatch on
the type name for each field, each label, each array item. For a small result
(a classification with five labels) that walk costs about two thirds of the
12 µs the encoding takes, and altlas encodes one result per request. Here each
record schema becomes a Python function once (generated source, one line per
field, no dispatch), which writes the same bytes about three times faster.

fastavro stays the authority. A compiled writer accepts a strict subset of
what fastavro accepts: exactly the Python types that altlas's datums hold
(``to_datum`` output and the dicts ``Answers`` builds), each checked, and only
the union shapes altlas's schemas use (``null`` with one type; records named
with fastavro's ``(name, value)`` tuples). Anything else raises ``Unsupported``
and the codec writes that record with fastavro, which produces its bytes or
its error as before; a schema with a construct not compiled here (``fixed``,
a union of primitives such as request params) is never compiled at all. The
tests compare both writers byte for byte on generated records of every event
schema.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from altlas.schemas.codegen import Generator

#: A compiled writer: appends the Avro body of the datum to the buffer.
Writer = Callable[[bytearray, Any], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63
_INT_MIN, _INT_MAX = -(2**31), 2**31
#: Zig-zag varints of the values 0..16383 (one or two bytes): lengths, counts, small numbers.
_VARINTS = tuple(bytes([z]) if z < 128 else bytes([(z & 0x7F) | 0x80, z >> 7]) for z in range(1 << 14))


class Unsupported(Exception):
    """A datum (or schema) outside what the compiled writers handle: fastavro writes it."""


def _varint(z: int) -> bytes:
    if z < 16384:
        return _VARINTS[z]
    out = bytearray()
    while z > 127:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _long(n: Any) -> bytes:
    if n.__class__ is not int:  # bool, floats, numpy scalars: fastavro's call
        raise Unsupported
    if not _LONG_MIN <= n < _LONG_MAX:
        raise Unsupported
    return _varint((n << 1) ^ (n >> 63))


def _bytes(b: Any) -> bytes:
    if b.__class__ is not bytes:
        raise Unsupported
    return _varint(len(b) << 1) + b


def _millis(t: Any) -> bytes:
    """timestamp-millis as fastavro computes it for aware datetimes (naive ones use local time)."""
    if t.__class__ is datetime and t.tzinfo is not None:
        return _long((t - _EPOCH) // _MILLISECOND)
    return _long(t)


def _container(x: Any, kind: type) -> Any:
    if x.__class__ is not kind:
        raise Unsupported
    return x


_HELPERS: dict[str, Any] = {
    "Unsupported": Unsupported,
    "_VARINTS": _VARINTS,
    "_varint": _varint,
    "_long": _long,
    "_bytes": _bytes,
    "_millis": _millis,
    "_container": _container,
    "_pack_f": struct.Struct("<f").pack,
    "_pack_d": struct.Struct("<d").pack,
}


class _Compiler(Generator):
    """Generates one function per named record of a parsed schema."""

    def __init__(self, parsed: dict[str, Any]) -> None:
        super().__init__(parsed, _HELPERS)

    def record(self, schema: dict[str, Any]) -> str:
        fn, new = self.function_for(schema, "w_")
        if not new:
            return fn
        lines = [f"def {fn}(o, d):", "    if d.__class__ is not dict: raise Unsupported"]
        for field in schema["fields"]:
            v = self.var()
            if "default" in field:
                lines.append(f"    {v} = d.get({field['name']!r}, {self.const(field['default'])})")
            else:
                lines.append(f"    {v} = d[{field['name']!r}]")
            lines += self.value(field["type"], v, "    ")
        self.source.append("\n".join(lines))
        return fn

    def value(self, schema: Any, v: str, ind: str) -> list[str]:
        """Lines appending the encoding of the value in variable ``v`` to ``o``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return self.union(schema, v, ind)
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if logical is not None:
            if (kind, logical) != ("long", "timestamp-millis"):
                raise Unsupported(f"logical type {logical}")
            return [f"{ind}o += _millis({v})"]
        if isinstance(kind, (dict, list)):
            return self.value(kind, v, ind)
        # The common types inline (a helper call per field would cost as much as the write).
        simple = {
            "null": [f"{ind}if {v} is not None: raise Unsupported"],
            "int": [
                f"{ind}if {v}.__class__ is not int or not {_INT_MIN} <= {v} < {_INT_MAX}: raise Unsupported",
                f"{ind}{v} = ({v} << 1) ^ ({v} >> 63)",
                f"{ind}o += _VARINTS[{v}] if {v} < 16384 else _varint({v})",
            ],
            "long": [f"{ind}o += _long({v})"],
            "float": [
                f"{ind}if {v}.__class__ is not float and {v}.__class__ is not int: raise Unsupported",
                f"{ind}o += _pack_f({v})",
            ],
            "double": [
                f"{ind}if {v}.__class__ is not float and {v}.__class__ is not int: raise Unsupported",
                f"{ind}o += _pack_d({v})",
            ],
            "string": [
                f"{ind}if not isinstance({v}, str): raise Unsupported",
                f"{ind}{v} = {v}.encode()",
                f"{ind}o += _VARINTS[len({v}) << 1] if len({v}) < 8192 else _varint(len({v}) << 1)",
                f"{ind}o += {v}",
            ],
            "bytes": [f"{ind}o += _bytes({v})"],
        }
        if kind in simple:
            return simple[kind]
        if kind == "boolean":
            return [
                f"{ind}if {v} is True: o += b'\\x01'",
                f"{ind}elif {v} is False: o += b'\\x00'",
                f"{ind}else: raise Unsupported",
            ]
        if kind == "enum":
            symbols = {s: _varint(i << 1) for i, s in enumerate(schema["symbols"])}
            return [f"{ind}o += {self.const(symbols)}[{v}]"]
        if kind == "record":
            return [f"{ind}{self.record(schema)}(o, {v})"]
        if kind == "array":
            item = self.var()
            return [
                f"{ind}if _container({v}, list):",
                f"{ind}    o += _varint(len({v}) << 1)",
                f"{ind}    for {item} in {v}:",
                *self.value(schema["items"], item, ind + "        "),
                f"{ind}o += b'\\x00'",
            ]
        if kind == "map":
            key, val = self.var(), self.var()
            return [
                f"{ind}if _container({v}, dict):",
                f"{ind}    o += _varint(len({v}) << 1)",
                f"{ind}    for {key}, {val} in {v}.items():",
                *self.value("string", key, ind + "        "),
                *self.value(schema["values"], val, ind + "        "),
                f"{ind}o += b'\\x00'",
            ]
        raise Unsupported(f"type {kind}")

    def union(self, branches: list[Any], v: str, ind: str) -> list[str]:
        resolved = [self.resolve(b) for b in branches]
        kinds = [b if isinstance(b, str) else b["type"] for b in resolved]
        null = kinds.index("null") if "null" in kinds else None
        others = [i for i, k in enumerate(kinds) if k != "null"]
        lines = []
        if null is not None:
            lines += [f"{ind}if {v} is None:", f"{ind}    o += {_varint(null << 1)!r}"]
        records = [i for i in others if kinds[i] == "record"]
        if not others or (len(others) > 1 and len(records) < len(others)):
            raise Unsupported(f"union {kinds}")  # a union of primitives: fastavro picks the branch
        kw = "elif" if lines else "if"
        # fastavro reads any tuple as (branch name, value); altlas names the branch of every
        # union of several records that way (schemas.types.to_datum).
        name, inner = self.var(), self.var()
        lines += [f"{ind}{kw} {v}.__class__ is tuple:", f"{ind}    {name}, {inner} = {v}"]
        for n, i in enumerate(records):
            lines += [
                f"{ind}    {'elif' if n else 'if'} {name} == {resolved[i]['name']!r}:",
                f"{ind}        o += {_varint(i << 1)!r}",
                f"{ind}        {self.record(resolved[i])}(o, {inner})",
            ]
        lines.append(f"{ind}    {'else: ' if records else ''}raise Unsupported")
        if len(others) > 1:  # an unnamed record of several: fastavro guesses the branch
            return [*lines, f"{ind}else: raise Unsupported"]
        return [
            *lines,
            f"{ind}else:",
            f"{ind}    o += {_varint(others[0] << 1)!r}",
            *self.value(branches[others[0]], v, ind + "    "),
        ]


def compile_writer(parsed: dict[str, Any]) -> Writer | None:
    """A compiled writer for a fastavro-parsed record schema, or None when it uses what is not compiled."""
    try:
        compiled: Writer = _Compiler(parsed).compile()
        return compiled
    except Unsupported:
        return None
