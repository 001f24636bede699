"""Avro on the wire: single-object encoding and Confluent framing.

Single-object encoding (``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body) is
the default because it needs no service: a reader finds the writer schema by
fingerprint and resolves it against its own reader schema, so both sides can
evolve. Confluent framing (``00`` + 4-byte schema id + body) is accepted and
produced when a schema-id map or a schema registry is configured, so services
using Confluent serializers interoperate without a bridge.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from fastavro import schemaless_reader, schemaless_writer

from altlas.schemas.catalog import SchemaCatalog, SchemaInfo
from altlas.schemas.errors import (
    AltlasError,
    DecodeError,
    SchemaMismatchError,
    TransientError,
    UnknownSchemaError,
)
from altlas.schemas.readers import Reader, compile_reader
from altlas.schemas.types import Record, from_datum, to_datum
from altlas.schemas.writers import Writer, compile_writer

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_SOE_HEADER = 10
_CONFLUENT_HEADER = 5

R = TypeVar("R", bound=Record)
C = TypeVar("C")


class WireFormat(StrEnum):
    """How records are framed on Kafka."""

    SINGLE_OBJECT = "single-object"
    CONFLUENT = "confluent"


class SchemaIds(Protocol):
    """Maps Confluent schema ids to writer schemas and back."""

    def schema_for_id(self, schema_id: int) -> SchemaInfo:
        """Writer schema for an id; raises UnknownSchemaError when there is none."""

    def id_for(self, info: SchemaInfo, topic: str) -> int:
        """Id under which ``info`` is written to ``topic``."""


class AvroCodec:
    """Encodes and decodes event records; one instance per process is enough."""

    def __init__(
        self,
        catalog: SchemaCatalog | None = None,
        *,
        encode_format: WireFormat = WireFormat.SINGLE_OBJECT,
        schema_ids: SchemaIds | None = None,
    ) -> None:
        if encode_format is WireFormat.CONFLUENT and schema_ids is None:
            raise ValueError("Confluent framing needs a schema-id map or a schema registry")
        self.catalog = catalog or SchemaCatalog()
        self.encode_format = encode_format
        self.schema_ids = schema_ids
        self._writers: dict[str, Writer | None] = {}  # compiled writers by record name, None: fastavro's
        self._readers: dict[str, Reader | None] = {}  # compiled readers of the current schemas, likewise

    # ------------------------------------------------------------ encoding
    def encode(self, name: str, datum: dict[str, Any], *, topic: str = "") -> bytes:
        """Frame and serialise ``datum`` as the current schema of ``name``."""
        info = self.catalog.get(name)
        if self.encode_format is WireFormat.CONFLUENT:
            assert self.schema_ids is not None
            header = bytes([CONFLUENT_MAGIC]) + self.schema_ids.id_for(info, topic).to_bytes(4, "big")
        else:
            header = SINGLE_OBJECT_MAGIC + info.fingerprint
        writer = _compiled(self._writers, info, compile_writer)
        if writer is not None:
            out = bytearray(header)
            try:
                writer(out, datum)
                return bytes(out)
            except Exception:  # outside the compiled subset: fastavro writes it, or raises its error
                pass
        buf = io.BytesIO()
        buf.write(header)
        schemaless_writer(buf, info.parsed, datum)
        return buf.getvalue()

    def encode_record(self, record: Record, *, topic: str = "") -> bytes:
        """Serialise a pydantic mirror of an event record."""
        return self.encode(record.avro_name, to_datum(record), topic=topic)

    def prefetch(self, records: Iterable[bytes], outputs: Iterable[tuple[str, str]]) -> None:
        """Resolve the schema ids these records and outputs need, caching them (blocking I/O).

        Call it on a worker thread before decoding or encoding on an event loop,
        so that a registry round trip (or a registry outage) never blocks the
        loop. Errors of single records are left for ``decode`` to report;
        a TransientError (registry unreachable) is raised.
        """
        if self.schema_ids is None:
            return
        for data in records:
            if data[:1] == bytes([CONFLUENT_MAGIC]) and len(data) >= _CONFLUENT_HEADER:
                try:
                    self.schema_ids.schema_for_id(int.from_bytes(data[1:_CONFLUENT_HEADER], "big"))
                except TransientError:
                    raise
                except AltlasError:
                    pass
        if self.encode_format is WireFormat.CONFLUENT:
            for name, topic in outputs:
                try:
                    self.schema_ids.id_for(self.catalog.get(name), topic)
                except TransientError:
                    raise
                except AltlasError:
                    pass  # refused for this topic: encoding that answer reports it, for its record alone

    # ------------------------------------------------------------ decoding
    def writer_of(self, data: bytes) -> SchemaInfo:
        """The writer schema named by the framing of ``data``."""
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < _SOE_HEADER:
                raise DecodeError("truncated single-object header")
            info = self.catalog.by_fingerprint(data[2:_SOE_HEADER])
            if info is None:
                raise UnknownSchemaError(f"unknown schema fingerprint {data[2:_SOE_HEADER].hex()}")
            return info
        if data[:1] == bytes([CONFLUENT_MAGIC]):
            if self.schema_ids is None:
                raise UnknownSchemaError(
                    "Confluent-framed record but no schema registry or schema-id map is configured"
                )
            if len(data) < _CONFLUENT_HEADER:
                raise DecodeError("truncated Confluent header")
            return self.schema_ids.schema_for_id(int.from_bytes(data[1:_CONFLUENT_HEADER], "big"))
        raise DecodeError(f"not an Avro record: unknown framing byte(s) {data[:2].hex() or 'empty'}")

    def decode(self, data: bytes, expected: str) -> dict[str, Any]:
        """Read ``data`` as the current schema of ``expected``, resolving the writer's."""
        writer = self.writer_of(data)
        reader = self.catalog.get(expected)
        header = _SOE_HEADER if data[:1] == SINGLE_OBJECT_MAGIC[:1] else _CONFLUENT_HEADER
        if writer.name != reader.name:
            raise SchemaMismatchError(f"record is a {writer.name}, expected {reader.name}")
        if writer.fingerprint == reader.fingerprint:  # no resolution: the compiled reader may read it
            compiled = self._compiled_read(reader, data, header)
            if compiled is not None:
                return compiled
        body = io.BytesIO(data)
        body.seek(header)
        try:
            datum = schemaless_reader(
                body,
                writer.parsed,
                None if writer.fingerprint == reader.fingerprint else reader.parsed,
                return_record_name=True,
                # Names only where a union has several records: the only place they are needed.
                return_record_name_override=True,
            )
        except (EOFError, StopIteration) as exc:
            raise DecodeError(f"truncated {writer.name} record") from exc
        except Exception as exc:  # fastavro raises many types on garbage input
            raise DecodeError(f"cannot read {writer.name}: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data):
            raise DecodeError(f"{len(data) - body.tell()} trailing bytes after {writer.name} record")
        if not isinstance(datum, dict):
            raise DecodeError(f"{writer.name} did not decode to a record")
        return datum

    def _compiled_read(self, info: SchemaInfo, data: bytes, header: int) -> dict[str, Any] | None:
        """The datum read by the compiled reader, or None: fastavro then reads it or says what is wrong."""
        reader = _compiled(self._readers, info, compile_reader)
        if reader is None:
            return None
        try:
            datum, end = reader(data, header)
        except Exception:  # anything unusual, broken input included, is fastavro's to judge
            return None
        return datum if end == len(data) else None

    def decode_record(self, data: bytes, cls: type[R]) -> R:
        """Decode into the pydantic mirror ``cls``; invalid content is a DecodeError."""
        datum = self.decode(data, cls.avro_name)
        try:
            record: R = from_datum(cls, datum)
        except ValueError as exc:
            raise DecodeError(f"invalid {cls.avro_name}: {exc}") from exc
        return record


def _compiled(
    cache: dict[str, C | None], info: SchemaInfo, compile: Callable[[dict[str, Any]], C | None]
) -> C | None:
    """The compiled reader or writer of a schema (None: fastavro's), compiled on first use."""
    if info.name not in cache:
        cache[info.name] = compile(info.parsed)
    return cache[info.name]
