"""The Avro contract: fingerprints, the pydantic mirrors, framing, evolution, bad bytes."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from altlas.schemas.catalog import EVENT_NAMES, NAMESPACE, SchemaCatalog
from altlas.schemas.codec import AvroCodec, WireFormat
from altlas.schemas.confluent import SchemaIdMap
from altlas.schemas.errors import DecodeError, ErrorCode, SchemaMismatchError, UnknownSchemaError
from altlas.schemas.fingerprint import crc64_avro, fingerprint_bytes
from altlas.schemas.types import RECORD_TYPES, Record, TextRequest, VisionRequest, from_datum, to_datum
from tests.avro_strategies import RECORD_SETTINGS, datums

CATALOG = SchemaCatalog()


def _signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


@pytest.mark.parametrize(
    ("canonical", "expected"),
    [
        ('"null"', 7195948357588979594),
        ('"boolean"', -6970731678124411036),
        ('"int"', 8247732601305521295),
        ('"string"', -8142146995180207161),
        ('{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
        (
            '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
            -1759257747318642341,
        ),
    ],
)
def test_crc64_avro_matches_the_avro_spec_vectors(canonical: str, expected: int) -> None:
    assert _signed(crc64_avro(canonical.encode())) == expected


def test_single_object_fingerprint_is_little_endian_like_fastavro() -> None:
    for name in EVENT_NAMES:
        info = CATALOG.get(name)
        assert info.fingerprint == fingerprint_bytes(info.canonical)
        assert info.fingerprint.hex() == fastavro.schema.fingerprint(info.canonical, "CRC-64-AVRO")


def test_every_record_in_the_avsc_files_has_a_pydantic_mirror_with_the_same_fields() -> None:
    for path in sorted(CATALOG.source_path("TextRequest").parent.glob(f"{NAMESPACE}.*.avsc")):
        raw = json.loads(path.read_text())
        full = f"{raw.get('namespace', NAMESPACE)}.{raw['name']}"
        if raw["type"] == "enum":
            continue
        cls = RECORD_TYPES[full]
        assert set(cls.model_fields) == {f["name"] for f in raw["fields"]}, full


def test_enums_mirror_their_avro_symbols() -> None:
    from altlas.schemas import types

    for avro_name, enum_cls in [
        ("TextTask", types.TextTask),
        ("VisionTask", types.VisionTask),
        ("AudioTask", types.AudioTask),
        ("ResultStatus", types.ResultStatus),
        ("ModelState", types.ModelState),
        ("ModelAction", types.ModelAction),
    ]:
        symbols = _find_enum(CATALOG, avro_name)
        assert [m.value for m in enum_cls] == symbols, avro_name


def _find_enum(catalog: SchemaCatalog, name: str) -> list[str]:
    def walk(node: Any) -> list[str] | None:
        if isinstance(node, dict):
            if node.get("type") == "enum" and node["name"].split(".")[-1] == name:
                return list(node["symbols"])
            for value in node.values():
                if (found := walk(value)) is not None:
                    return found
        if isinstance(node, list):
            for value in node:
                if (found := walk(value)) is not None:
                    return found
        return None

    for event in EVENT_NAMES:
        found = walk(catalog.bundled(event))
        if found is not None:
            return found
    raise AssertionError(f"enum {name} not found")


@pytest.mark.parametrize("name", EVENT_NAMES)
@settings(RECORD_SETTINGS, max_examples=40)
@given(data=st.data())
def test_every_event_round_trips_through_its_pydantic_mirror(name: str, data: st.DataObject) -> None:
    info = CATALOG.get(name)
    datum = data.draw(datums(CATALOG.bundled(name)))
    first = io.BytesIO()
    fastavro.schemaless_writer(first, info.parsed, datum)
    read = fastavro.schemaless_reader(
        io.BytesIO(first.getvalue()),
        info.parsed,
        None,
        return_record_name=True,
        return_record_name_override=True,  # as AvroCodec reads
    )
    model: Record = from_datum(RECORD_TYPES[info.name], read)
    second = io.BytesIO()
    fastavro.schemaless_writer(second, info.parsed, to_datum(model))
    assert second.getvalue() == first.getvalue()


def _request() -> VisionRequest:
    from altlas.orchestration.clients.client import make_request

    request = make_request(
        "vision", "classify", b"\x89PNG", model="m", params={"top_k": 3, "t": 0.5, "x": ["a"]}
    )
    assert isinstance(request, VisionRequest)
    return request


def test_single_object_encoding_round_trips_and_is_framed() -> None:
    codec = AvroCodec(CATALOG)
    request = _request()
    data = codec.encode_record(request)
    assert data[:2] == b"\xc3\x01" and data[2:10] == CATALOG.get("VisionRequest").fingerprint
    assert codec.decode_record(data, VisionRequest) == request.model_copy(
        update={
            "created_at": request.created_at.replace(
                microsecond=request.created_at.microsecond // 1000 * 1000
            )
        }
    )


@pytest.mark.parametrize(
    ("data", "error", "code"),
    [
        (b"", DecodeError, ErrorCode.DECODE_ERROR),
        (b"\xc3\x01\x00", DecodeError, ErrorCode.DECODE_ERROR),
        (b"\xc3\x01" + b"\x00" * 8 + b"abc", UnknownSchemaError, ErrorCode.UNKNOWN_SCHEMA),
        (b"{json: 1}", DecodeError, ErrorCode.DECODE_ERROR),
        (b"\x00\x00\x00\x00\x07abc", UnknownSchemaError, ErrorCode.UNKNOWN_SCHEMA),
    ],
)
def test_bad_framing_is_a_typed_error(data: bytes, error: type[Exception], code: ErrorCode) -> None:
    with pytest.raises(error) as caught:
        AvroCodec(CATALOG).decode_record(data, VisionRequest)
    assert caught.value.code is code  # type: ignore[attr-defined]


def test_truncated_and_padded_records_are_decode_errors() -> None:
    codec = AvroCodec(CATALOG)
    data = codec.encode_record(_request())
    for cut in range(10, len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:cut], "VisionRequest")
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode(data + b"\x00", "VisionRequest")


def test_a_record_of_another_type_is_a_schema_mismatch() -> None:
    codec = AvroCodec(CATALOG)
    from altlas.orchestration.clients.client import make_request

    text = codec.encode_record(make_request("text", "generate", "hi"))
    with pytest.raises(SchemaMismatchError):
        codec.decode_record(text, VisionRequest)


def _older_text_request() -> dict[str, Any]:
    """TextRequest as a producer of an earlier version wrote it: no deadline, metadata or reply_topic."""
    bundled = CATALOG.bundled("TextRequest")
    bundled["fields"] = [
        f for f in bundled["fields"] if f["name"] not in ("deadline", "metadata", "reply_topic")
    ]
    return bundled


def test_records_from_an_older_writer_schema_decode_with_defaults() -> None:
    old = _older_text_request()
    catalog = SchemaCatalog()
    info = catalog.register_writer(old)
    body = io.BytesIO()
    body.write(b"\xc3\x01" + fingerprint_bytes(to_parsing_canonical_form(fastavro.parse_schema(old))))
    fastavro.schemaless_writer(
        body,
        fastavro.parse_schema(old),
        {"request_id": "r1", "task": "generate", "model": "", "params": {}, "payload": "hi", "created_at": 0},
    )
    assert info.fingerprint == body.getvalue()[2:10]
    request = AvroCodec(catalog).decode_record(body.getvalue(), TextRequest)
    assert request.request_id == "r1" and request.metadata == {} and request.deadline is None
    # ...and without registering the old writer, the fingerprint is unknown, not misread.
    with pytest.raises(UnknownSchemaError):
        AvroCodec(SchemaCatalog()).decode_record(body.getvalue(), TextRequest)


def test_current_records_decode_with_an_older_reader_schema() -> None:
    from altlas.orchestration.clients.client import make_request

    data = AvroCodec(CATALOG).encode_record(make_request("text", "chat", "[]", metadata={"tenant": "t1"}))
    old_reader = fastavro.parse_schema(_older_text_request())
    datum = fastavro.schemaless_reader(io.BytesIO(data[10:]), CATALOG.get("TextRequest").parsed, old_reader)
    assert datum["task"] == "chat" and "metadata" not in datum


def test_unknown_enum_symbols_from_newer_writers_fall_back_to_the_default() -> None:
    newer = CATALOG.bundled("TextRequest")
    task = next(f for f in newer["fields"] if f["name"] == "task")
    task["type"] = {**task["type"], "symbols": [*task["type"]["symbols"], "summarize"]}
    catalog = SchemaCatalog()
    parsed = fastavro.parse_schema(newer)
    catalog.register_writer(newer)
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + fingerprint_bytes(to_parsing_canonical_form(parsed)))
    datum = {"request_id": "r", "task": "summarize", "payload": "x", "created_at": 0}
    fastavro.schemaless_writer(buf, parsed, datum)
    assert AvroCodec(catalog).decode_record(buf.getvalue(), TextRequest).task == "auto"


def test_confluent_framing_with_a_static_schema_id_map() -> None:
    ids = SchemaIdMap(CATALOG, {7: "altlas.events.VisionRequest", 8: "TextRequest"})
    codec = AvroCodec(CATALOG, encode_format=WireFormat.CONFLUENT, schema_ids=ids)
    data = codec.encode_record(_request(), topic="ai.requests.vision")
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == 7
    assert codec.decode_record(data, VisionRequest).model == "m"
    # The same codec still reads single-object records.
    soe = AvroCodec(CATALOG).encode_record(_request())
    assert codec.decode_record(soe, VisionRequest).model == "m"
    with pytest.raises(UnknownSchemaError):
        codec.decode(b"\x00\x00\x00\x00\x09" + data[5:], "VisionRequest")


def test_bundled_schemas_parse_standalone_and_keep_the_fingerprint() -> None:
    for name in EVENT_NAMES:
        parsed = fastavro.parse_schema(CATALOG.bundled(name), named_schemas={})
        assert fingerprint_bytes(to_parsing_canonical_form(parsed)) == CATALOG.get(name).fingerprint
