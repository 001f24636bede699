"""Creating altlas's topics when they are missing.

Unless a replication factor is configured, topics are created with -1, which
tells the broker to use its ``default.replication.factor``: the operator of a
cluster sets replication once, on the brokers, and a single dev broker still
works. The broker answers errors per topic instead of raising them, so they are
checked here: a topic that silently failed to be created would otherwise be
auto-created later with whatever the broker's defaults are.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from altlas.orchestration.app.settings import Settings

log = logging.getLogger(__name__)


def topic_plan(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic altlas uses, with the configs it should be created with."""
    t = settings.topics
    plan: dict[str, dict[str, str]] = {}
    for modality in settings.modalities:
        plan[t.requests(modality)] = {}
        plan[t.results(modality)] = {}
    plan[t.model_commands] = {}
    # The status topic holds the latest state per model id: compact it.
    plan[t.model_status] = {"cleanup.policy": "compact"}
    plan[t.dead_letter] = {"retention.ms": str(14 * 24 * 3600 * 1000)}
    return plan


async def ensure_topics(
    client_kwargs: dict[str, Any],
    topics: dict[str, dict[str, str]],
    *,
    partitions: int,
    replication_factor: int | None,
) -> list[str]:
    """Create the missing ones (replication factor None: the broker's default); returns those created."""
    admin = AIOKafkaAdminClient(**client_kwargs)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor if replication_factor is not None else -1,
                # aiokafka's NewTopic takes -1 only beside an assignment; an empty one sends none.
                replica_assignments=None if replication_factor is not None else {},
                topic_configs=topics[name],
            )
            for name in missing
        ]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            response = None  # another instance raced us
        for name, code, *message in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):  # already exists: another instance raced us
                raise for_code(code)(f"creating topic {name}: {message[-1] if message else ''}")
        log.info("created topics", extra={"topics": missing})
        return missing
    finally:
        await admin.close()
