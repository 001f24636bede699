"""Creating altlas's topics when they are missing."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from altlas.orchestration.settings import Settings

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
    replication_factor: int,
) -> list[str]:
    """Create the missing ones; returns the names created."""
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
                replication_factor=replication_factor,
                topic_configs=topics[name],
            )
            for name in missing
        ]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass  # another instance raced us
        log.info("created topics", extra={"topics": missing})
        return missing
    finally:
        await admin.close()
