"""SASL (PLAIN and SCRAM) reaches every client altlas makes; secrets stay out of logs and events."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from altlas.orchestration.clients.client import make_request
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localkafka import LocalBroker, SaslUsers
from altlas.orchestration.observability.logs import secrets_of, setup_logging
from altlas.schemas.types import ResultStatus
from tests.conftest import KAFKA_VERSION, connect, isolated_settings, serving
from tests.images import solid

USERS = SaslUsers(plain={"alice": "alice-secret-1"}, scram_sha_256={"bob": "bob-secret-2"})


@pytest.fixture(scope="module")
def sasl_broker() -> Iterator[str]:
    broker = LocalBroker(KafkaDistribution(KAFKA_VERSION), sasl=USERS)
    broker.start()
    yield broker.bootstrap
    broker.stop()


@pytest.mark.parametrize(
    ("mechanism", "user", "password"),
    [("PLAIN", "alice", "alice-secret-1"), ("SCRAM-SHA-256", "bob", "bob-secret-2")],
)
async def test_every_client_authenticates_with_sasl(
    sasl_broker: str,
    registry_file: Path,
    mechanism: str,
    user: str,
    password: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kafka = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_username": user,
        "sasl_password": password,
    }
    settings = isolated_settings(sasl_broker, registry_file, modalities=["vision"], kafka=kafka)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("aiokafka").level)
    setup_logging("DEBUG", "json", secrets_of(settings))  # what `altlas run` does, at the chattiest level
    logging.getLogger("aiokafka").setLevel(logging.DEBUG)  # even with aiokafka's own debug output on
    try:
        async with serving(settings):  # admin, producer, consumers, command consumer
            async with connect(settings) as client:
                request = make_request("vision", "classify", solid((1, 250, 1)), model="mean-color")
                result = await client.request(request)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        logging.getLogger("aiokafka").setLevel(saved[2])
    logged = capsys.readouterr().err
    assert result is not None and result.status is ResultStatus.OK
    assert "Authenticated as" in logged  # the logs did cover authentication
    assert password not in logged
    assert password not in repr(settings) and password not in settings.model_dump_json()


async def test_a_wrong_password_fails_start_up_clearly(sasl_broker: str, registry_file: Path) -> None:
    kafka = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "alice",
        "sasl_password": "nope",
    }
    settings = isolated_settings(sasl_broker, registry_file, modalities=["vision"], kafka=kafka)
    with pytest.raises(ConnectionError, match="credentials"):
        async with serving(settings):
            pass
