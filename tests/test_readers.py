"""Compiled Avro readers: fastavro's datums, and fastavro's verdict on anything else."""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from altlas.orchestration.clients.client import make_request
from altlas.schemas.catalog import EVENT_NAMES, SchemaCatalog
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import DecodeError
from altlas.schemas.readers import compile_reader
from tests.avro_strategies import RECORD_SETTINGS, datums

CATALOG = SchemaCatalog()
#: Results hold unions of several records, whose branch names fastavro's options decide: not compiled.
COMPILED = [n for n in EVENT_NAMES if not n.endswith("Result")]
READERS = {name: compile_reader(CATALOG.get(name).parsed) for name in EVENT_NAMES}


def _body(name: str, datum: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, CATALOG.get(name).parsed, datum)
    return buf.getvalue()


def _fastavro(name: str, body: bytes) -> tuple[Any, int]:
    buf = io.BytesIO(body)
    datum = fastavro.schemaless_reader(
        buf, CATALOG.get(name).parsed, None, return_record_name=True, return_record_name_override=True
    )
    return datum, buf.tell()


def _compiled(name: str, body: bytes) -> tuple[Any, int]:
    reader = READERS[name]
    assert reader is not None
    return reader(body, 0)


def test_requests_and_other_single_record_events_compile_and_results_do_not() -> None:
    for name in EVENT_NAMES:
        assert (READERS[name] is not None) == (name in COMPILED), name


@pytest.mark.parametrize("name", COMPILED)
@settings(RECORD_SETTINGS, max_examples=80)
@given(data=st.data())
def test_compiled_readers_read_fastavros_datums(name: str, data: st.DataObject) -> None:
    body = _body(name, data.draw(datums(CATALOG.bundled(name))))
    assert _compiled(name, body) == _fastavro(name, body) == (_fastavro(name, body)[0], len(body))


_REQUESTS = [n for n in COMPILED if n.endswith("Request")]


@pytest.mark.parametrize("name", _REQUESTS)
@settings(RECORD_SETTINGS, max_examples=300)
@given(data=st.data())
def test_on_corrupted_input_the_compiled_reader_fails_or_agrees_with_fastavro(
    name: str, data: st.DataObject
) -> None:
    """Truncated, overwritten, inserted or appended bytes: whatever the compiled reader accepts,
    fastavro reads the same way (the codec falls back to fastavro on everything else)."""
    body = bytearray(_body(name, data.draw(datums(CATALOG.bundled(name)))))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        how = data.draw(st.sampled_from(["cut", "set", "insert"]))
        if how == "cut":
            del body[at:]
        elif how == "set" and at < len(body):
            body[at] = data.draw(st.integers(0, 255))
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=12))
    try:
        mine = _compiled(name, bytes(body))
    except Exception:
        return  # the codec asks fastavro
    assert mine == _fastavro(name, bytes(body))


def _zigzag(n: int) -> bytes:
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z > 127:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    return bytes(out + bytes([z]))


def _string(s: str) -> bytes:
    return _zigzag(len(s.encode())) + s.encode()


def test_maps_and_arrays_written_in_sized_blocks_read_like_fastavro() -> None:
    """Java's blocking encoder writes a negative count and the block's byte size before each block."""
    params = (
        _zigzag(-2) + _zigzag(40)
        + _string("a") + _zigzag(2) + _zigzag(7)  # long 7
        + _string("b") + _zigzag(5) + _zigzag(-2) + _zigzag(9) + _string("x") + _string("y") + _zigzag(0)
        + _zigzag(1) + _string("c") + _zigzag(3) + struct.pack("<d", 0.5)
        + _zigzag(0)
    )  # fmt: skip
    body = (
        _string("r-1") + _zigzag(0) + _string("m") + params + _zigzag(3) + b"abc"
        + _zigzag(0) + _zigzag(0) + _zigzag(1_764_000_000_000) + _zigzag(0) + _zigzag(0)
    )  # fmt: skip
    mine = _compiled("VisionRequest", body)
    assert mine == _fastavro("VisionRequest", body)
    assert mine[0]["params"] == {"a": 7, "b": ["x", "y"], "c": 0.5}


def test_the_codec_reads_requests_as_before_and_reports_broken_ones_as_before() -> None:
    codec = AvroCodec(CATALOG)
    request = make_request(
        "vision", "classify", b"\x89PNG" + bytes(300), model="m@1", request_id="r-é",
        params={"top_k": 3, "models": ["a", "b"], "t": 0.5, "x": None, "y": True}, metadata={"k": "v"},
    )  # fmt: skip
    data = codec.encode_record(request)
    fast = codec.decode(data, "altlas.events.VisionRequest")
    assert fast == _fastavro("VisionRequest", data[10:])[0]
    decoded = codec.decode_record(data, type(request))
    assert (decoded.request_id, decoded.params, decoded.payload) == (
        request.request_id, request.params, request.payload,
    )  # fmt: skip
    # A boolean byte of 2: not the compiled reader's to judge; fastavro's reading stands.
    at = data.index(b"y") + 2
    odd = data[:at] + b"\x02" + data[at + 1 :]
    assert (
        data[at] == 1
        and codec.decode(odd, "altlas.events.VisionRequest") == _fastavro("VisionRequest", odd[10:])[0]
    )
    for broken, message in [
        (data[:-3], "truncated"),
        (data + b"\x00", "trailing bytes"),
        (data[:10] + b"\xff" * 12, "cannot read"),
    ]:
        with pytest.raises(DecodeError, match=message):
            codec.decode(broken, "altlas.events.VisionRequest")
