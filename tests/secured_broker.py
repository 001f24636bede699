"""A local broker that enforces ACLs: KRaft's StandardAuthorizer, SASL/SCRAM users, grants made over the wire.

The broker is ``LocalBroker`` with SASL users and three more settings. ``admin``
(SASL/PLAIN, as LocalBroker makes it) is a super user; so is ``ANONYMOUS``,
the principal of the PLAINTEXT controller listener, over which the broker half
of this combined node registers with its controller half (no client can
produce through a controller listener). Everyone else may do only what an ACL
allows: ``allow.everyone.if.no.acl.found`` stays false.

aiokafka's admin client has no ``create_acls``, but its protocol module has
CreateAcls; ``grant`` sends it from a plain AIOKafkaClient as ``admin``.
"""

from __future__ import annotations

from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest

from altlas.orchestration.app.acls import Acl
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localkafka import LocalBroker, SaslUsers

#: Kafka's wire codes (org.apache.kafka.common.resource.ResourceType, PatternType, acl.AclOperation).
_RESOURCE = {"topic": 2, "group": 3, "transactional-id": 5}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {"read": 3, "write": 4, "create": 5, "describe": 8}
_ALLOW = 3

AUTHORIZER = {
    "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "super.users": "User:admin;User:ANONYMOUS",
    "allow.everyone.if.no.acl.found": "false",
}


def secured_broker(dist: KafkaDistribution, users: dict[str, str]) -> LocalBroker:
    """A LocalBroker (not started) whose SCRAM-SHA-256 ``users`` can do nothing until granted."""
    return LocalBroker(dist, sasl=SaslUsers(scram_sha_256=users), extra_config=dict(AUTHORIZER))


def scram_kwargs(bootstrap: str, user: str, password: str) -> dict[str, Any]:
    """aiokafka arguments of a SCRAM-SHA-256 user."""
    return {
        "bootstrap_servers": bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


async def grant(broker: LocalBroker, principal: str, acls: list[Acl]) -> None:
    """Create ALLOW rules for ``principal`` (``User:name``) on any host, as the super user."""
    assert broker.sasl is not None
    client = AIOKafkaClient(bootstrap_servers=broker.bootstrap, **broker.sasl.client_kwargs())
    await client.bootstrap()
    try:
        node = client.get_random_node()
        for acl in acls:
            request = CreateAclsRequest(
                _RESOURCE[acl.resource],
                acl.name,
                _PATTERN[acl.pattern],
                principal,
                "*",
                _OPERATION[acl.operation],
                _ALLOW,
            )
            response = await client.send(node, request)
            for code, message in response.creation_responses:
                if code:
                    raise for_code(code)(f"creating {acl}: {message}")
    finally:
        await client.close()
