"""Compiled Avro writers: the same bytes as fastavro, and fastavro's behaviour outside their subset."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from altlas.schemas.catalog import EVENT_NAMES, SchemaCatalog
from altlas.schemas.codec import AvroCodec
from altlas.schemas.writers import Unsupported, compile_writer
from tests.avro_strategies import RECORD_SETTINGS, datums

CATALOG = SchemaCatalog()
CODEC = AvroCodec(CATALOG)
#: What altlas writes (results, dead letters, status, commands) compiles; requests carry a union of
#: primitives (params) and stay with fastavro: altlas only reads them.
COMPILED = [n for n in EVENT_NAMES if not n.endswith("Request")]


def _fastavro(name: str, datum: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, CATALOG.get(name).parsed, datum)
    return buf.getvalue()


WRITERS = {name: compile_writer(CATALOG.get(name).parsed) for name in EVENT_NAMES}


def _compiled(name: str, datum: Any) -> bytes:
    writer = WRITERS[name]
    assert writer is not None
    out = bytearray()
    writer(out, datum)
    return bytes(out)


def test_what_altlas_writes_compiles_and_requests_do_not() -> None:
    for name in EVENT_NAMES:
        assert (WRITERS[name] is not None) == (name in COMPILED), name


@pytest.mark.parametrize("name", COMPILED)
@settings(RECORD_SETTINGS, max_examples=60)
@given(data=st.data())
def test_compiled_writers_write_fastavros_bytes(name: str, data: st.DataObject) -> None:
    datum = data.draw(datums(CATALOG.bundled(name)))
    # Directly, so a datum the compiled writer wrongly refused would fail here rather than fall back.
    assert _compiled(name, datum) == _fastavro(name, datum)


def _result(**changes: Any) -> dict[str, Any]:
    datum: dict[str, Any] = {
        "request_id": "r-1",
        "task": "classify",
        "status": "ok",
        "model_id": "m",
        "model_version": "1",
        "output": (
            "altlas.events.Classification",
            {
                "labels": [
                    {"index": 3, "label": "cat", "score": 0.75},
                    {"index": 70000, "label": "é", "score": 0.1},
                ]
            },
        ),
        "error": None,
        "timings": {"queued_ms": 1.5, "inference_ms": 2.25, "batch_size": 512, "total_ms": 1e9},
        "created_at": datetime(2026, 11, 28, 1, 2, 3, 999_999, tzinfo=UTC),
        "attributes": {"cache": "miss"},
        "metadata": {},
        "members": [],
    }
    datum.update(changes)
    return datum


def test_large_values_and_nested_results_take_the_compiled_path() -> None:
    long_text = "x" * 20_000  # a length past the precomputed varints
    datum = _result(
        request_id=long_text,
        created_at=datetime(1969, 12, 31, 23, 59, 59, 500, tzinfo=UTC),  # before the epoch
        members=[
            _result(status="error", output=None, error={"code": "E", "message": "m", "retriable": True})
        ],
    )
    assert _compiled("VisionResult", datum) == _fastavro("VisionResult", datum)
    letter = {
        "topic": "t",
        "partition": 2,
        "offset": 2**40,
        "timestamp": datetime.now(UTC),
        "key": None,
        "value": bytes(range(256)) * 400,
        "headers": [{"key": "k", "value": b"v"}],
        "error_code": "DECODE",
        "error_class": "DecodeError",
        "error_message": "bad",
        "request_id": None,
        "consumer_group": "g",
        "instance_id": "i",
        "failed_at": datetime.now(UTC),
    }
    assert _compiled("DeadLetter", letter) == _fastavro("DeadLetter", letter)
    assert CODEC.encode("altlas.events.DeadLetter", letter)[10:] == _fastavro("DeadLetter", letter)


@pytest.mark.parametrize(
    "changes",
    [
        {"created_at": datetime(2026, 1, 1, 12, 0, 0)},  # naive: fastavro reads it as local time
        {"output": {"labels": [{"index": 1, "label": "a", "score": 0.5}]}},  # untagged union branch
        {
            "output": (
                "altlas.events.Classification",
                {"labels": [{"index": np.int64(1), "label": "a", "score": np.float32(0.5)}]},
            )
        },
        {"timings": {"queued_ms": True, "inference_ms": 1, "batch_size": 1, "total_ms": 2.0}},
        {
            "output": (
                "altlas.events.Classification",
                {"labels": ({"index": 2**40, "label": "a", "score": 1.0},)},
            )
        },
    ],
    ids=[
        "naive-datetime",
        "untagged-union",
        "numpy-scalars",
        "bool-and-int-as-double",
        "tuple-array-big-int",
    ],
)
def test_datums_outside_the_compiled_subset_are_written_by_fastavro(changes: dict[str, Any]) -> None:
    datum = _result(**changes)
    with pytest.raises(Unsupported):
        _compiled("VisionResult", datum)
    assert CODEC.encode("altlas.events.VisionResult", datum)[10:] == _fastavro("VisionResult", datum)


@pytest.mark.parametrize(
    "changes",
    [
        {"request_id": 5},
        {"status": "unknown"},
        {"output": ("altlas.events.Nope", {})},
        {"timings": {"queued_ms": "fast", "inference_ms": 1.0, "batch_size": 1, "total_ms": 2.0}},
    ],
    ids=["int-for-string", "bad-enum", "unknown-branch", "string-for-double"],
)
def test_invalid_datums_fail_as_fastavro_fails(changes: dict[str, Any]) -> None:
    datum = _result(**changes)
    with pytest.raises(Exception) as fastavros:
        _fastavro("VisionResult", datum)
    with pytest.raises(type(fastavros.value)):
        CODEC.encode("altlas.events.VisionResult", datum)
