"""The Kafka ACLs an altlas instance needs, and no more, derived from its settings.

altlas reads the request topics (in one group per modality) and the commands
topic (in no group); it writes results, model status and dead letters, and
answers on the reply topics its policy allows. Exactly-once adds its
transactional ids. Nothing else: no CREATE (operators create the topics and run
altlas with ``topics.create: false``), no cluster-wide grant, no DESCRIBE
beyond what READ and WRITE imply. Since Kafka 3.0 an idempotent producer
needs WRITE on a topic rather than IDEMPOTENT_WRITE on the cluster.

Whoever can write the commands topic can make every instance load any model
of its registry, so only operators' principals get WRITE on it; altlas itself
only reads it.

``kafka-acls`` takes the same rules as command lines (``kafka_acls_commands``), and
the secured-broker test grants exactly ``required_acls`` and nothing more.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Literal

from altlas.orchestration.app.identity import transactional_prefix
from altlas.orchestration.app.settings import Settings

Resource = Literal["topic", "group", "transactional-id"]
Operation = Literal["read", "write"]
Pattern = Literal["literal", "prefixed"]

#: A reply-topic pattern of the form ``<escaped literal>.+`` (or ``.*``) names a prefix.
_PREFIX_PATTERN = re.compile(r"^(?P<prefix>(?:[^\\.^$*+?{}\[\]|()]|\\.)+)\.[+*]$")


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule for altlas's principal (on any host)."""

    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation
    why: str


def reply_prefixes(settings: Settings) -> tuple[list[str], list[str]]:
    """Topic prefixes the reply-topic policy allows, and the patterns that are no plain prefix."""
    prefixes, other = [], []
    for pattern in settings.topics.reply_topics:
        match = _PREFIX_PATTERN.match(pattern)
        if match:
            prefixes.append(re.sub(r"\\(.)", r"\1", match["prefix"]))
        else:
            other.append(pattern)
    return prefixes, other


def required_acls(settings: Settings) -> list[Acl]:
    """Every grant altlas's principal needs to serve ``settings`` (reply patterns that name no prefix
    need grants per topic, which operators add: see ``reply_prefixes``)."""
    t, kafka = settings.topics, settings.kafka
    acls: list[Acl] = []
    for m in settings.modalities:
        acls.append(Acl("topic", t.requests(m), "literal", "read", f"{m} requests"))
        acls.append(Acl("group", f"{kafka.group_id}.{m}", "literal", "read", f"the {m} consumer group"))
    acls.append(Acl("topic", t.model_commands, "literal", "read", "model commands (no group)"))
    for m in settings.modalities:
        acls.append(Acl("topic", t.results(m), "literal", "write", f"{m} results"))
    acls.append(Acl("topic", t.model_status, "literal", "write", "model status"))
    acls.append(Acl("topic", t.dead_letter, "literal", "write", "dead letters"))
    prefixes, _ = reply_prefixes(settings)
    for prefix in prefixes:
        acls.append(
            Acl("topic", prefix, "prefixed", "write", f"reply topics (topics.reply_topics: {prefix}*)")
        )
    if settings.delivery == "exactly_once":
        acls.append(
            Acl(
                "transactional-id",
                f"{transactional_prefix(settings)}.",
                "prefixed",
                "write",
                "exactly-once: one transactional producer per modality",
            )
        )
    return acls


def kafka_acls_commands(
    settings: Settings, principal: str, *, bootstrap: str = "BROKER:9092", config: str = "admin.properties"
) -> list[str]:
    """``kafka-acls.sh`` command lines that grant ``required_acls`` to ``principal`` (``User:altlas``)."""
    flag = {"topic": "--topic", "group": "--group", "transactional-id": "--transactional-id"}
    lines = []
    for acl in required_acls(settings):
        args = [
            "kafka-acls.sh",
            "--bootstrap-server",
            bootstrap,
            "--command-config",
            config,
            "--add",
            "--allow-principal",
            principal,
            "--operation",
            acl.operation.capitalize(),
            flag[acl.resource],
            acl.name,
        ]
        if acl.pattern == "prefixed":
            args += ["--resource-pattern-type", "prefixed"]
        lines.append(shlex.join(args))
    return lines
