"""Avro readers compiled from the schemas, for the requests altlas reads one by one.

fastavro's reader, like its writer, walks the schema for every record, and a
vision request (ten fields, two maps, two timestamps) took about 6 µs to read,
more than anything else altlas does with a request before its model runs. Here
a record schema becomes generated Python once: one block of code per field,
reading straight from the bytes, no dispatch.

fastavro stays the authority. A compiled reader only ever answers for well
formed input it fully understands; anything unusual (truncated data, a varint
of more than 64 bits, a boolean byte other than 0 or 1, an out-of-range enum or
union index, invalid UTF-8) makes it raise, and the codec then reads the
record with fastavro, whose result or error is the answer, exactly as before.
It is used only when the writer's schema is the reader's (no resolution), and
schemas with a construct not compiled here (``fixed``, logical types other than
timestamp-millis, unions of several records, whose branch names fastavro's
options decide) are left to fastavro entirely. The tests compare both readers
on generated records and on thousands of corrupted ones.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from altlas.schemas.codegen import Generator

#: A compiled reader: (data, position) -> (datum, position after it).
Reader = Callable[[bytes, int], tuple[Any, int]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Unreadable(Exception):
    """Input (or a schema) the compiled readers leave to fastavro."""


def _varint(b: bytes, p: int, x: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``x`` had its continuation bit set."""
    x &= 0x7F
    shift = 7
    while True:
        c = b[p]
        p += 1
        x |= (c & 0x7F) << shift
        if c < 128:
            if x >> 64:  # a tenth byte above 1: more than 64 bits; fastavro decides
                raise Unreadable
            return x, p
        shift += 7
        if shift > 63:  # more than ten bytes: no long is that long; fastavro decides
            raise Unreadable


def _millis(n: int) -> datetime:
    # As fastavro reads timestamp-millis (datetime.fromtimestamp would round differently).
    return _EPOCH + timedelta(microseconds=n * 1000)


_HELPERS: dict[str, Any] = {
    "Unreadable": Unreadable,
    "_varint": _varint,
    "_millis": _millis,
    "_unpack_f": struct.Struct("<f").unpack_from,
    "_unpack_d": struct.Struct("<d").unpack_from,
}


class _Compiler(Generator):
    """Generates one function per named record of a parsed schema."""

    def __init__(self, parsed: dict[str, Any]) -> None:
        super().__init__(parsed, _HELPERS)

    def record(self, schema: dict[str, Any]) -> str:
        fn, new = self.function_for(schema, "r_")
        if not new:
            return fn
        lines = [f"def {fn}(b, p):"]
        fields = []
        for field in schema["fields"]:
            v = self.var()
            lines += self.value(field["type"], v, "    ")
            fields.append(f"{field['name']!r}: {v}")
        lines.append(f"    return {{{', '.join(fields)}}}, p")
        self.source.append("\n".join(lines))
        return fn

    def long(self, v: str, ind: str) -> list[str]:
        """Lines reading a zig-zag varint into ``v``."""
        return [
            f"{ind}{v} = b[p]",
            f"{ind}p += 1",
            f"{ind}if {v} > 127: {v}, p = _varint(b, p, {v})",
            f"{ind}{v} = ({v} >> 1) ^ -({v} & 1)",
        ]

    def sized(self, v: str, ind: str) -> list[str]:
        """Lines reading a length-prefixed byte string into ``v`` (bytes)."""
        n = self.var()
        return [
            *self.long(n, ind),
            f"{ind}if {n} < 0 or p + {n} > len(b): raise Unreadable",
            f"{ind}{v} = b[p : p + {n}]",
            f"{ind}p += {n}",
        ]

    def value(self, schema: Any, v: str, ind: str) -> list[str]:
        """Lines reading one value of ``schema`` into the variable ``v``."""
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return self.union(schema, v, ind)
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = schema.get("logicalType") if isinstance(schema, dict) else None
        if logical is not None:
            if (kind, logical) != ("long", "timestamp-millis"):
                raise Unreadable(f"logical type {logical}")
            return [*self.long(v, ind), f"{ind}{v} = _millis({v})"]
        if isinstance(kind, (dict, list)):
            return self.value(kind, v, ind)
        if kind == "null":
            return [f"{ind}{v} = None"]
        if kind == "boolean":
            return [
                f"{ind}{v} = b[p]",
                f"{ind}p += 1",
                f"{ind}if {v} > 1: raise Unreadable",
                f"{ind}{v} = {v} == 1",
            ]
        if kind in ("int", "long"):
            return self.long(v, ind)
        if kind == "float":
            return [f"{ind}{v} = _unpack_f(b, p)[0]", f"{ind}p += 4"]
        if kind == "double":
            return [f"{ind}{v} = _unpack_d(b, p)[0]", f"{ind}p += 8"]
        if kind == "bytes":
            return self.sized(v, ind)
        if kind == "string":
            return [*self.sized(v, ind), f"{ind}{v} = {v}.decode()"]
        if kind == "enum":
            symbols = self.const(tuple(schema["symbols"]))
            return [
                *self.long(v, ind),
                f"{ind}if not 0 <= {v} < {len(schema['symbols'])}: raise Unreadable",
                f"{ind}{v} = {symbols}[{v}]",
            ]
        if kind == "record":
            return [f"{ind}{v}, p = {self.record(schema)}(b, p)"]
        if kind == "array":
            item = self.var()
            return [
                f"{ind}{v} = []",
                *self.blocks(
                    ind,
                    [
                        *self.value(schema["items"], item, ind + "        "),
                        f"{ind}        {v}.append({item})",
                    ],
                ),
            ]
        if kind == "map":
            key, val = self.var(), self.var()
            return [
                f"{ind}{v} = {{}}",
                *self.blocks(
                    ind,
                    [
                        *self.value("string", key, ind + "        "),
                        *self.value(schema["values"], val, ind + "        "),
                        f"{ind}        {v}[{key}] = {val}",
                    ],
                ),
            ]
        raise Unreadable(f"type {kind}")

    def blocks(self, ind: str, item: list[str]) -> list[str]:
        """An array's or map's blocks: a count (negative: then a byte size) before each, 0 at the end."""
        count, size = self.var(), self.var()
        return [
            f"{ind}while True:",
            *self.long(count, ind + "    "),
            f"{ind}    if {count} == 0: break",
            f"{ind}    if {count} < 0:",
            f"{ind}        {count} = -{count}",
            *self.long(size, ind + "        "),
            f"{ind}    for _ in range({count}):",
            *item,
        ]

    def union(self, branches: list[Any], v: str, ind: str) -> list[str]:
        resolved = [self.resolve(b) for b in branches]
        kinds = [b if isinstance(b, str) else b["type"] for b in resolved]
        if kinds.count("record") > 1:  # fastavro's options decide how such branches are named
            raise Unreadable(f"union {kinds}")
        index = self.var()
        lines = self.long(index, ind)
        for i, branch in enumerate(branches):
            lines.append(f"{ind}{'elif' if i else 'if'} {index} == {i}:")
            lines += self.value(branch, v, ind + "    ")
        lines.append(f"{ind}else: raise Unreadable")
        return lines


def compile_reader(parsed: dict[str, Any]) -> Reader | None:
    """A compiled reader for a fastavro-parsed record schema, or None when it uses what is not compiled."""
    try:
        compiled: Reader = _Compiler(parsed).compile()
        return compiled
    except Unreadable:
        return None
