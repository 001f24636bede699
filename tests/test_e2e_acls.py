"""altlas runs on exactly the ACLs docs/operations.md lists, and nobody else may command its models.

A real broker with KRaft's StandardAuthorizer and SCRAM users: ``altlas`` gets
``required_acls`` and nothing more, ``team`` may write requests and read results
(a service that uses altlas), and ``admin``, a super user, creates the topics
and plays the operator who sends model commands.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError

from altlas.orchestration.app.acls import Acl, required_acls
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.app.topics import ensure_topics, topic_plan
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localkafka import LocalBroker
from altlas.schemas.types import ModelAction, ModelCommand, ResultStatus
from tests.conftest import KAFKA_VERSION, isolated_settings, serving
from tests.images import solid
from tests.secured_broker import grant, scram_kwargs, secured_broker

USERS = {"altlas": "altlas-scram-1", "team": "team-scram-2"}


@pytest.fixture(scope="module")
def acl_broker() -> Iterator[LocalBroker]:
    broker = secured_broker(KafkaDistribution(KAFKA_VERSION), USERS)
    broker.start()
    yield broker
    broker.stop()


@dataclass
class Secured:
    """altlas's settings on the secured broker, and clients of its other principals."""

    settings: Settings
    admin: AltlasClient
    team: AltlasClient


@pytest.fixture
async def secured(
    acl_broker: LocalBroker, registry_file: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Secured]:
    """Topics created by the admin, altlas granted exactly ``required_acls``, ``team`` its own two grants."""
    delivery = getattr(request, "param", "at_least_once")
    settings = isolated_settings(
        acl_broker.bootstrap,
        registry_file,
        modalities=["vision"],
        delivery=delivery,
        topics={"create": False},
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": "altlas",
            "sasl_password": USERS["altlas"],
        },
    )
    assert acl_broker.sasl is not None
    admin_kwargs: dict[str, Any] = {
        "bootstrap_servers": acl_broker.bootstrap,
        **acl_broker.sasl.client_kwargs(),
    }
    await ensure_topics(admin_kwargs, topic_plan(settings), partitions=2, replication_factor=1)
    await grant(acl_broker, "User:altlas", required_acls(settings))
    t = settings.topics
    await grant(
        acl_broker,
        "User:team",
        [
            Acl("topic", t.requests("vision"), "literal", "write", "its requests"),
            Acl("topic", t.results("vision"), "literal", "read", "its results"),
        ],
    )
    codec = build_codec(settings)
    admin = AltlasClient(admin_kwargs, codec, t)
    team = AltlasClient(scram_kwargs(acl_broker.bootstrap, "team", USERS["team"]), codec, t)
    async with admin, team:
        yield Secured(settings, admin, team)


@pytest.mark.parametrize("secured", ["at_least_once", "exactly_once"], indirect=True)
async def test_altlas_serves_on_exactly_the_required_acls(secured: Secured) -> None:
    settings, t = secured.settings, secured.settings.topics
    async with serving(settings):
        async with (
            secured.admin.reader(t.model_status) as status,
            secured.admin.reader(t.dead_letter) as dead_letters,
        ):
            # A team's request is answered (read requests, group, write results; the transaction).
            request = make_request("vision", "classify", solid((1, 250, 1)), model="mean-color")
            result = await secured.team.request(request, timeout_s=60)
            assert result is not None and result.status is ResultStatus.OK, result
            assert result.output is not None and result.output.labels[0].label == "green"
            # An operator's command is read and answered on the status topic.
            cid = uuid.uuid4().hex
            command = ModelCommand(command_id=cid, action=ModelAction.STATUS, model_id="mean-color")
            await secured.admin.publish(command, t.model_commands, key="mean-color")
            assert await _until(status, lambda r: secured.admin.decode_status(r.value).command_id == cid)
            # A record that is no request goes to the dead letters.
            await secured.team.send_raw(t.requests("vision"), b"not avro", key=b"junk")
            assert await _until(dead_letters, lambda r: r.key == b"junk")


async def test_no_other_principal_can_produce_commands(acl_broker: LocalBroker, secured: Secured) -> None:
    t = secured.settings.topics
    command = ModelCommand(command_id="c-1", action=ModelAction.LOAD, model_id="mean-color")
    value = secured.team.codec.encode_record(command, topic=t.model_commands)
    for user in ("team", "altlas"):  # a service that uses altlas, and altlas itself: read only
        producer = AIOKafkaProducer(**scram_kwargs(acl_broker.bootstrap, user, USERS[user]))
        await producer.start()
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await asyncio.wait_for(producer.send_and_wait(t.model_commands, value, key=b"mean-color"), 30)
        finally:
            await producer.stop()
    # The grant the team does have works: the refusal is the ACL, not a broken client.
    await secured.team.send_raw(t.requests("vision"), b"x", key=b"k")


async def _until(reader: Any, match: Any, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(match(r) for r in await reader.read(0.5)):
            return True
    return False
