"""Confluent framing against a real schema registry (Apicurio's Confluent-compatible API).

Other teams' services use Confluent's serializers: a ``00`` byte, a 4-byte id
from a schema registry, then the Avro body. These tests prove that altlas and
those services understand each other through a real registry and a real
broker, with nothing faked on either side: our ``SchemaRegistryClient`` against
the registry's REST API, confluent-kafka's ``AvroSerializer`` writing requests
the orchestrator must answer, and confluent-kafka's ``AvroDeserializer``
reading results whose ids the orchestrator registered itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("confluent_kafka.schema_registry.avro", reason="needs confluent-kafka[schemaregistry]")

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.catalog import SchemaCatalog
from altlas.schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec
from altlas.schemas.confluent import LookupBudget, SchemaRegistryClient, SubjectStrategy
from altlas.schemas.errors import UnknownSchemaError
from altlas.schemas.types import Classification, ResultStatus, VisionResult
from tests.builders import MEAN_COLOR_LABELS, expected_mean_color
from tests.conftest import Running, isolated_settings, serving
from tests.images import solid

VISION_RESULT = "altlas.events.VisionResult"
COLORS: list[tuple[int, int, int]] = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (255, 200, 100)]


def registry_get(base: str, path: str) -> Any:
    """GET on the registry's REST API, parsed (independent of both clients under test)."""
    with urllib.request.urlopen(base + path, timeout=10) as resp:
        return json.loads(resp.read())


def latest_id(base: str, subject: str) -> int:
    """Id of the newest version registered under ``subject``."""
    return int(registry_get(base, f"/subjects/{urllib.parse.quote(subject)}/versions/latest")["id"])


def expected_label(rgb: tuple[int, int, int]) -> str:
    """The label the mean-colour model must rank first for a solid ``rgb`` image."""
    return MEAN_COLOR_LABELS[int(np.argmax(expected_mean_color(rgb)))]


def request_datum(request_id: str, rgb: tuple[int, int, int]) -> dict[str, Any]:
    """A VisionRequest as a plain dict, the way a confluent-kafka producer builds one."""
    now = datetime.now(UTC)
    return {
        "request_id": request_id,
        "task": "classify",
        "model": "mean-color@1",
        "params": {"top_k": 4},  # a union branch (long) inside a map, written by Confluent's serializer
        "payload": solid(rgb),
        "content_type": "image/png",
        "reply_topic": None,
        "created_at": now,
        "deadline": now + timedelta(minutes=5),
        "metadata": {"tenant": "acme", "rgb": ",".join(map(str, rgb))},
    }


def produce_with_confluent(bootstrap: str, registry: str, topic: str, datums: list[dict[str, Any]]) -> None:
    """Serialise with confluent-kafka's AvroSerializer (auto-registering) and produce; blocking."""
    schema_str = json.dumps(SchemaCatalog().bundled("VisionRequest"))
    serializer = AvroSerializer(ConfluentRegistryClient({"url": registry}), schema_str)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    ctx = SerializationContext(topic, MessageField.VALUE)
    for datum in datums:
        producer.produce(topic, value=serializer(datum, ctx), key=datum["request_id"].encode())
    assert producer.flush(30) == 0, "confluent producer did not deliver everything"


def consume_with_confluent(
    bootstrap: str, registry: str, topic: str, want: set[str], timeout_s: float = 60.0
) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Read ``topic`` from the start with confluent-kafka, decoding with its AvroDeserializer; blocking."""
    deserializer = AvroDeserializer(ConfluentRegistryClient({"url": registry}))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    found: dict[str, tuple[bytes, dict[str, Any]]] = {}
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        ctx = SerializationContext(topic, MessageField.VALUE)
        deadline = time.monotonic() + timeout_s
        while want - set(found) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                continue
            raw = msg.value()
            assert isinstance(raw, bytes)
            decoded = deserializer(raw, ctx)
            assert isinstance(decoded, dict)
            found.setdefault(decoded["request_id"], (raw, decoded))
    finally:
        consumer.close()
    return found


def confluent_settings(bootstrap: str, models: Path, registry: str) -> Settings:
    """Isolated settings with Confluent output framing through ``registry``."""
    return isolated_settings(
        bootstrap, models, kafka={"wire_format": "confluent", "schema_registry_url": registry}
    )


@pytest.fixture
async def confluent_running(
    kafka_bootstrap: str,
    registry_file: Path,
    schema_registry_url: str,
) -> AsyncIterator[Running]:
    """An orchestrator that writes Confluent framing with ids from the real registry."""
    settings = confluent_settings(kafka_bootstrap, registry_file, schema_registry_url)
    async with serving(settings) as run:
        yield run


# --------------------------------------------------------------- our client vs the registry


def test_registration_is_idempotent_at_the_registry_and_ids_resolve_to_the_same_schema(
    schema_registry_url: str,
) -> None:
    """Every altlas process registers on first use; a restart must get the same id, not a new version."""
    topic = f"t{uuid.uuid4().hex[:8]}.ai.results.vision"
    info = SchemaCatalog().get("VisionResult")

    first = SchemaRegistryClient(schema_registry_url, SchemaCatalog()).id_for(info, topic)
    # A fresh client has no cache: the registry itself must answer with the same id.
    second = SchemaRegistryClient(schema_registry_url, SchemaCatalog()).id_for(info, topic)
    assert second == first
    assert registry_get(schema_registry_url, f"/subjects/{topic}-value/versions") == [1]
    assert latest_id(schema_registry_url, f"{topic}-value") == first

    reader = SchemaRegistryClient(schema_registry_url, SchemaCatalog())
    resolved = reader.schema_for_id(first)
    assert resolved.name == VISION_RESULT
    assert resolved.fingerprint == info.fingerprint  # same canonical form after the round trip
    assert reader.schema_for_id(first) is resolved  # cached: one lookup per id per process

    with pytest.raises(UnknownSchemaError, match="not in the registry"):
        reader.schema_for_id(2**31 - 1)


def test_ids_never_seen_are_looked_up_within_a_budget(schema_registry_url: str) -> None:
    """Made-up ids in a flood of records must not cost a registry round trip each, in series."""
    topic = f"t{uuid.uuid4().hex[:8]}.ai.results.vision"
    known = SchemaRegistryClient(schema_registry_url, SchemaCatalog()).id_for(
        SchemaCatalog().get("VisionResult"), topic
    )
    now = [0.0]
    budget = LookupBudget(per_s=1.0, burst=3, clock=lambda: now[0])
    reader = SchemaRegistryClient(schema_registry_url, SchemaCatalog(), lookups=budget)
    assert reader.schema_for_id(known).name == VISION_RESULT  # the first of three lookups
    for made_up in (2**31 - 2, 2**31 - 3):  # asked, and not there
        with pytest.raises(UnknownSchemaError, match="not in the registry"):
            reader.schema_for_id(made_up)
    with pytest.raises(UnknownSchemaError, match="not looked up"):  # the budget is spent: not asked
        reader.schema_for_id(2**31 - 4)
    assert reader.schema_for_id(known).name == VISION_RESULT  # cached ids cost nothing
    with pytest.raises(UnknownSchemaError, match="asked recently"):  # nor do ids known to be missing
        reader.schema_for_id(2**31 - 2)
    now[0] = 1.0  # a second later, one more lookup
    with pytest.raises(UnknownSchemaError, match="not in the registry"):
        reader.schema_for_id(2**31 - 4)
    with pytest.raises(UnknownSchemaError, match="not looked up"):
        reader.schema_for_id(2**31 - 5)


def test_subject_strategies_name_subjects_like_confluents_serializers(
    schema_registry_url: str,
) -> None:
    """Confluent consumers look schemas up by subject, so ours must be the names their strategies use."""
    tag = uuid.uuid4().hex[:8]
    info = SchemaCatalog().get("VisionResult")
    cases = {
        SubjectStrategy.TOPIC: (f"t{tag}.topic", f"t{tag}.topic-value"),
        SubjectStrategy.RECORD: (f"t{tag}.record", VISION_RESULT),
        SubjectStrategy.TOPIC_RECORD: (f"t{tag}.topic-record", f"t{tag}.topic-record-{VISION_RESULT}"),
    }
    ids = {}
    for strategy, (topic, subject) in cases.items():
        client = SchemaRegistryClient(schema_registry_url, SchemaCatalog(), strategy=strategy)
        ids[strategy] = client.id_for(info, topic)
        assert latest_id(schema_registry_url, subject) == ids[strategy], strategy

    subjects = set(registry_get(schema_registry_url, "/subjects"))
    ours = {s for s in subjects if s.startswith(f"t{tag}.")}
    # RECORD ignores the topic; the other two name exactly one subject each.
    assert ours == {f"t{tag}.topic-value", f"t{tag}.topic-record-{VISION_RESULT}"}
    assert VISION_RESULT in subjects
    # The same schema text has one id across subjects (Confluent's contract, which Apicurio keeps).
    assert len(set(ids.values())) == 1, ids


# --------------------------------------------------------------- the orchestrator vs confluent-kafka


async def test_requests_from_confluents_serializer_are_answered_readably_by_its_deserializer(
    confluent_running: Running,
    schema_registry_url: str,
) -> None:
    """A Confluent-stack service must be able to call altlas with its own serializer and read the answer."""
    settings = confluent_running.orchestrator.settings
    bootstrap = settings.kafka.bootstrap_servers
    requests_topic = settings.topics.requests("vision")
    results_topic = settings.topics.results("vision")
    datums = [request_datum(f"cf-{i}", rgb) for i, rgb in enumerate(COLORS)]
    # Three different winners and four different score vectors: a swapped answer cannot pass unseen.
    assert {expected_label(rgb) for rgb in COLORS} == {"red", "green", "blue"}
    assert len({tuple(np.round(expected_mean_color(rgb), 3)) for rgb in COLORS}) == len(COLORS)

    await asyncio.to_thread(produce_with_confluent, bootstrap, schema_registry_url, requests_topic, datums)
    found = await asyncio.to_thread(
        consume_with_confluent,
        bootstrap,
        schema_registry_url,
        results_topic,
        {d["request_id"] for d in datums},
    )

    assert set(found) == {d["request_id"] for d in datums}
    result_id = latest_id(schema_registry_url, f"{results_topic}-value")  # registered by the orchestrator
    for datum, rgb in zip(datums, COLORS, strict=True):
        raw, result = found[datum["request_id"]]
        assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == result_id
        assert result["status"] == "ok", result["error"]
        assert result["error"] is None
        assert (result["task"], result["model_id"], result["model_version"]) == (
            "classify",
            "mean-color",
            "1",
        )
        assert result["metadata"] == datum["metadata"]
        # The deserializer gives union branches as plain dicts (no record name attached).
        assert set(result["output"]) == {"labels"}
        labels = result["output"]["labels"]
        assert labels[0]["label"] == expected_label(rgb)
        assert len(labels) == 4  # top_k came through the map-of-unions
        scores = {lab["index"]: lab["score"] for lab in labels}
        assert np.allclose([scores[i] for i in range(4)], expected_mean_color(rgb), atol=1e-6)
        assert result["timings"]["batch_size"] >= 1 and result["timings"]["inference_ms"] > 0
        created = result["created_at"]
        assert isinstance(created, datetime)
        assert abs((created - datum["created_at"]).total_seconds()) < 60


async def test_single_object_requests_are_still_accepted_when_output_is_confluent(
    confluent_running: Running,
    schema_registry_url: str,
) -> None:
    """Turning on Confluent output must not break callers that still send single-object records."""
    settings = confluent_running.orchestrator.settings
    bootstrap = settings.kafka.bootstrap_servers
    requests_topic = settings.topics.requests("vision")
    expected: dict[str, tuple[int, int, int]] = {}
    async with (
        AltlasClient(client_kwargs(settings.kafka, client_suffix="soe"), AvroCodec(), settings.topics) as soe,
        soe.reader(settings.topics.results("vision")) as reader,
    ):
        for i, rgb in enumerate(COLORS):
            req = make_request("vision", "classify", solid(rgb), model="mean-color@1", request_id=f"soe-{i}")
            value = soe.codec.encode_record(req, topic=requests_topic)
            assert value[:2] == SINGLE_OBJECT_MAGIC
            await soe.send_raw(requests_topic, value, key=req.request_id.encode())
            expected[req.request_id] = rgb
        confluent = [request_datum(f"mixed-cf-{i}", rgb) for i, rgb in enumerate(COLORS)]
        await asyncio.to_thread(
            produce_with_confluent, bootstrap, schema_registry_url, requests_topic, confluent
        )
        expected.update({d["request_id"]: rgb for d, rgb in zip(confluent, COLORS, strict=True)})

        # Our own reader, resolving the orchestrator's ids through a fresh registry client.
        codec = build_codec(settings)
        results: dict[str, tuple[bytes, VisionResult]] = {}
        deadline = time.monotonic() + 60
        while set(expected) - set(results) and time.monotonic() < deadline:
            for rec in await reader.read(0.5):
                result = codec.decode_record(rec.value, VisionResult)
                results.setdefault(result.request_id, (rec.value, result))

    assert set(results) == set(expected)
    for rid, rgb in expected.items():
        raw, result = results[rid]
        assert raw[:1] == b"\x00", "output framing follows the setting, not the request's framing"
        assert result.status is ResultStatus.OK, (rid, result.error)
        assert isinstance(result.output, Classification)
        assert result.output.labels[0].label == expected_label(rgb)
        got = {lab.index: lab.score for lab in result.output.labels}
        assert np.allclose([got[i] for i in range(4)], expected_mean_color(rgb), atol=1e-6)


async def test_a_registry_outage_delays_answers_instead_of_failing_them(
    kafka_bootstrap: str, registry_file: Path, schema_registry_url: str
) -> None:
    """While the registry is unreachable, batches wait and retry; nothing is dead-lettered or lost."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from tests.faults import TcpProxy

    parsed = urllib.parse.urlsplit(schema_registry_url)
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 80)
    await proxy.up()
    via_proxy = f"http://127.0.0.1:{proxy.port}{parsed.path}"
    settings = confluent_settings(kafka_bootstrap, registry_file, via_proxy)
    reply = f"ai.results.replies-{uuid.uuid4().hex[:8]}"  # never registered: writing to it needs the registry
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    await admin.create_topics([NewTopic(reply, num_partitions=1, replication_factor=1)])
    await admin.close()
    try:
        async with serving(settings):
            async with (
                AltlasClient(client_kwargs(settings.kafka), AvroCodec(), settings.topics) as client,
                client.reader(reply) as answers,
                client.reader(settings.topics.dead_letter) as dlq,
            ):
                await proxy.down()
                req = make_request(
                    "vision", "classify", solid(COLORS[0]), model="mean-color@1", reply_topic=reply
                )
                await client.send(req)
                assert await answers.read(3.0) == [], "answered while the registry was down"
                await proxy.up()
                records: list[Any] = []
                deadline = time.monotonic() + 60
                while not records and time.monotonic() < deadline:
                    records = await answers.read(0.5)
                letters = await dlq.read(1.0)
    finally:
        await proxy.down()
    assert len(records) == 1 and letters == []
    direct = confluent_settings(kafka_bootstrap, registry_file, schema_registry_url)
    result = build_codec(direct).decode_record(records[0].value, VisionResult)
    assert result.request_id == req.request_id and result.status is ResultStatus.OK
