"""The broker version is a setting: the same request/result round trip on Kafka 3.9 (log4j 1) and 4.x."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from altlas.orchestration.clients.client import make_request
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localkafka import LocalBroker
from altlas.schemas.types import Classification, ResultStatus
from tests.conftest import KAFKA_VERSION, connect, isolated_settings, serving
from tests.images import rotated_page

OTHER_VERSIONS = sorted({"3.9.2", "4.1.2"} - {KAFKA_VERSION})


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")), reason="an external broker is in use")
@pytest.mark.parametrize("version", OTHER_VERSIONS)
async def test_round_trip_on_another_kafka_version(version: str, registry_file: Path) -> None:
    broker = LocalBroker(KafkaDistribution(version))
    broker.start()
    try:
        settings = isolated_settings(broker.bootstrap, registry_file, modalities=["vision"])
        async with serving(settings):
            async with connect(settings) as client:
                result = await client.request(
                    make_request("vision", "classify", rotated_page(270)), timeout_s=60
                )
    finally:
        broker.stop()
    assert result is not None and result.status is ResultStatus.OK
    assert isinstance(result.output, Classification) and result.output.labels[0].label == "270"
