"""The wire contract holds for librdkafka clients (confluent-kafka, kcat), not only aiokafka.

Results are decoded here straight from the ``.avsc`` files with fastavro and
the single-object header parsed by hand, so a misframed record would fail even
if our own codec agreed with itself.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import fastavro
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, Producer

from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import make_request
from altlas.schemas.catalog import SchemaCatalog
from altlas.schemas.codec import AvroCodec
from tests.builders import MEAN_COLOR_LABELS, expected_mean_color
from tests.conftest import Running
from tests.images import solid


def _decode_result_independently(value: bytes) -> dict:  # type: ignore[type-arg]
    """Parse the single-object header by hand and read the body with the published schema."""
    assert value[:2] == b"\xc3\x01", "not single-object encoded"
    schema = fastavro.parse_schema(SchemaCatalog().bundled("VisionResult"))
    fingerprint = fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(schema), "CRC-64-AVRO"
    )
    assert value[2:10].hex() == fingerprint
    return fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, None)  # type: ignore[return-value]


def _check(result: dict, rgb: tuple[int, int, int], request_id: str) -> None:  # type: ignore[type-arg]
    assert result["request_id"] == request_id and result["status"] == "ok"
    want = expected_mean_color(rgb)
    assert result["output"]["labels"][0]["label"] == MEAN_COLOR_LABELS[int(want.argmax())]


async def test_confluent_kafka_producer_and_read_committed_consumer(
    running: Running, settings: Settings
) -> None:
    codec = AvroCodec()
    request = make_request("vision", "classify", solid((20, 200, 30)), model="mean-color", request_id="ck-1")
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True})
    producer.produce(
        settings.topics.requests("vision"),
        codec.encode_record(request),
        key=b"ck-1",
        headers=[("traceparent", traceparent)],
    )
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"{settings.kafka.group_id}.reader",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([settings.topics.results("vision")])
    try:
        msg = None
        deadline = time.monotonic() + 60
        while msg is None and time.monotonic() < deadline:
            msg = await asyncio.to_thread(consumer.poll, 0.5)
            if msg is not None and msg.error():
                msg = None
    finally:
        consumer.close()
    assert msg is not None, "no result within 60 s"
    assert msg.key() == b"ck-1"
    # The partition Kafka's default partitioner picks for the key (aiokafka's murmur2, not ours).
    assert msg.partition() == (murmur2(b"ck-1") & 0x7FFFFFFF) % settings.topics.partitions
    _check(_decode_result_independently(msg.value()), (20, 200, 30), "ck-1")
    headers = dict(msg.headers() or [])
    assert headers["traceparent"].split(b"-")[1] == traceparent.split(b"-")[1]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (apt-get install kcat)")
async def test_kcat_can_send_a_request_and_read_its_result(
    running: Running, settings: Settings, tmp_path: Path
) -> None:
    request = make_request("vision", "classify", solid((5, 5, 240)), model="mean-color", request_id="kcat-1")
    payload = tmp_path / "request.avro"
    payload.write_bytes(AvroCodec().encode_record(request))
    bootstrap = settings.kafka.bootstrap_servers
    produce = await asyncio.to_thread(
        subprocess.run,
        [
            "kcat",
            "-P",
            "-b",
            bootstrap,
            "-t",
            settings.topics.requests("vision"),
            "-k",
            "kcat-1",
            str(payload),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert produce.returncode == 0, produce.stderr
    out = tmp_path / "result.avro"
    consume = await asyncio.to_thread(
        subprocess.run,
        [
            "kcat",
            "-C",
            "-b",
            bootstrap,
            "-t",
            settings.topics.results("vision"),
            "-o",
            "beginning",
            "-c",
            "1",
            "-X",
            "isolation.level=read_committed",
            "-f",
            "%k\n%s",
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    assert consume.returncode == 0, consume.stderr
    key, _, value = consume.stdout.partition(b"\n")
    out.write_bytes(value)
    assert key == b"kcat-1"
    _check(_decode_result_independently(value), (5, 5, 240), "kcat-1")
    # The metadata kcat reports agrees on the topic layout altlas created.
    meta = await asyncio.to_thread(
        subprocess.run, ["kcat", "-L", "-b", bootstrap, "-J"], capture_output=True, timeout=30, check=True
    )
    topics = {t["topic"]: len(t["partitions"]) for t in json.loads(meta.stdout)["topics"]}
    assert topics[settings.topics.results("vision")] == settings.topics.partitions
