"""Replay: an old request topic, reprocessed with another model version into a new topic, with lineage."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.orchestration.clients.replay import Position, parse_position
from altlas.schemas.types import ResultStatus, VisionResult
from tests.conftest import write_config
from tests.images import solid


def test_positions_parse_offsets_times_and_keywords() -> None:
    assert parse_position("42") == Position(offset=42)
    assert parse_position("earliest") == Position(offset=0)
    assert parse_position("latest") == Position()
    assert parse_position("1764250000000ms") == Position(timestamp_ms=1764250000000)
    assert parse_position("2026-11-27T10:00:00+00:00") == Position(timestamp_ms=1795773600000)


def _replay(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "altlas.orchestration", "replay", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ},
    )


async def test_replay_reanswers_a_range_with_the_named_version_and_lineage(
    settings: Settings, tmp_path: Path
) -> None:
    source = f"old-requests-{os.urandom(3).hex()}"
    output = f"reprocessed-{os.urandom(3).hex()}"
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    await admin.create_topics([NewTopic(source, num_partitions=1, replication_factor=1)])
    await admin.close()
    codec = build_codec(settings)
    past = datetime.now(UTC) - timedelta(days=30)
    async with AltlasClient(client_kwargs(settings.kafka), codec, settings.topics) as client:
        for i in range(20):
            # Old requests: another model version, deadlines long gone, some with reply topics.
            req = make_request(
                "vision",
                "classify",
                solid((i * 10, 50, 50)),
                model="mean-color@1",
                request_id=f"old-{i}",
                deadline=past,
                reply_topic="somewhere-else" if i % 2 else None,
            )
            await client.send(req, topic=source)
        await client.send_raw(source, b"not a request")  # offset 20: unreadable
        await asyncio.sleep(0.05)
        cut = datetime.now(UTC)
        await asyncio.sleep(0.05)
        for i in range(20, 25):
            await client.send(
                make_request("vision", "classify", solid((1, i, 1)), request_id=f"old-{i}"), topic=source
            )
    config = write_config(settings, tmp_path / "altlas.yaml")

    done = await asyncio.to_thread(
        _replay,
        config,
        "--topic",
        source,
        "--from",
        "earliest",
        "--to",
        cut.isoformat(),
        "--model",
        "mean-color@2",
        "--output-topic",
        output,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "21" in done.stdout and "ok=20" in done.stdout  # 21 records read, 20 answered, 1 skipped

    async with AltlasClient(client_kwargs(settings.kafka), codec, settings.topics) as client:
        async with client.reader(output, from_beginning=True) as reader:
            records: list = []
            deadline = time.monotonic() + 30
            while len(records) < 20 and time.monotonic() < deadline:
                records += await reader.read(0.5)
            records += await reader.read(1.0)
    assert len(records) == 20
    replay_ids = set()
    for rec in records:
        result = codec.decode_record(rec.value, VisionResult)
        headers = dict(rec.headers)
        i = int(result.request_id.split("-")[1])
        assert rec.key == result.request_id.encode()
        assert (
            result.status is ResultStatus.OK and result.model_version == "2"
        )  # replay ignores old deadlines
        assert headers["altlas.source.topic"] == source.encode()
        assert headers["altlas.source.offset"] == str(i).encode()
        assert headers["altlas.model.version"] == b"2" and len(headers["altlas.model.config"]) == 16
        replay_ids.add(headers["altlas.replay"])
    assert len(replay_ids) == 1

    # An offset range of the same topic: exactly those records.
    ranged = await asyncio.to_thread(
        _replay,
        config,
        "--topic",
        source,
        "--from",
        "22",
        "--to",
        "24",
        "--model",
        "mean-color@1",
        "--output-topic",
        output + "-b",
    )
    assert ranged.returncode == 0, ranged.stderr[-3000:]
    assert "ok=2" in ranged.stdout
