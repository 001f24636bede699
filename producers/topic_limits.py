"""Each destination topic's own ``max.message.bytes``, read from the broker and cached.

The producer only knows its own ``max_request_size``; a topic may be
configured for less (a reply topic created with a small limit). The broker
then refuses the batch, and an idempotent producer's sequence for that
partition is spent, which costs a producer replacement. Knowing the topic's
limit, an oversized answer is refused here instead, before anything is sent.
Look-ups run in the background: the first answers to a new topic are sent
unchecked while its limit is fetched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

log = logging.getLogger(__name__)

_KEY = "max.message.bytes"
_MAX_FETCHING = 8  # look-ups at once: the rest wait for a later answer to ask again


class TopicLimits:
    """Cached ``max.message.bytes`` per topic (None: unknown, unreadable or not yet fetched)."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        *,
        ttl_s: float = 300.0,
        timeout_s: float = 5.0,
        max_topics: int = 10_000,
    ) -> None:
        self._kwargs = client_kwargs
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_topics = max_topics
        self._known: OrderedDict[str, tuple[int | None, float]] = OrderedDict()  # topic -> (limit, when)
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._admin: AIOKafkaAdminClient | None = None
        self._admin_lock = asyncio.Lock()

    def get(self, topic: str) -> int | None:
        """The topic's limit if known; otherwise start learning it and say None for now."""
        known = self._known.get(topic)
        if known is not None and time.monotonic() - known[1] < self.ttl_s:
            return known[0]
        if topic not in self._fetching and len(self._fetching) < _MAX_FETCHING:
            task = asyncio.get_running_loop().create_task(self._fetch(topic))
            self._fetching[topic] = task
            task.add_done_callback(lambda _: self._fetching.pop(topic, None))
        return known[0] if known is not None else None

    async def fetch(self, topic: str) -> int | None:
        """The topic's limit, asked of the broker now (within the time limit)."""
        await self._fetch(topic)
        return self._known.get(topic, (None, 0.0))[0]

    async def _fetch(self, topic: str) -> None:
        limit: int | None = None
        try:
            admin = await self._client()
            resource = ConfigResource(ConfigResourceType.TOPIC, topic, {_KEY: None})
            (response,) = await asyncio.wait_for(admin.describe_configs([resource]), self.timeout_s)
            for entry in response.to_object()["resources"][0]["config_entries"]:
                if entry["config_names"] == _KEY and entry["config_value"]:
                    limit = int(entry["config_value"])
        except Exception as exc:  # no Describe grant, no such topic yet, broker busy: unknown for a while
            log.debug("max.message.bytes of %s unknown: %s", topic, exc)
        self._known[topic] = (limit, time.monotonic())
        self._known.move_to_end(topic)
        while len(self._known) > self.max_topics:  # request fields name topics: least recent go first
            self._known.popitem(last=False)

    async def _client(self) -> AIOKafkaAdminClient:
        async with self._admin_lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**self._kwargs)
                await asyncio.wait_for(admin.start(), self.timeout_s)
                self._admin = admin
            return self._admin

    async def close(self) -> None:
        """Stop look-ups and the admin client."""
        for task in list(self._fetching.values()):
            task.cancel()
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
