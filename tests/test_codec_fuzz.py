"""Hypothesis against the decoder: any bytes decode to a request or a typed error, quickly."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import AltlasError
from altlas.schemas.types import VisionRequest
from tests.test_fuzz import _seeds

SEEDS = _seeds()
CODEC = AvroCodec()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(mutated(), st.binary(max_size=300)))
def test_any_bytes_decode_to_a_request_or_a_typed_error(data: bytes) -> None:
    started = time.perf_counter()
    try:
        request = CODEC.decode_record(data, VisionRequest)
    except AltlasError as exc:
        assert exc.code.value in {"DECODE_ERROR", "UNKNOWN_SCHEMA", "SCHEMA_MISMATCH"}
    else:
        assert isinstance(request, VisionRequest)
    assert time.perf_counter() - started < 1.0
