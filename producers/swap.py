"""One idempotent producer at a time, replaced when the broker stops taking its sequence numbers.

An idempotent producer numbers its batches per partition. When the broker
refuses a batch (too large for the topic), or loses the producer's state (a
broker restart, an expired producer id), every later batch to that partition
fails with OutOfOrderSequenceNumber or UnknownProducerId, for ever: aiokafka
does not bump the epoch as the Java client does. The only way on is a new
producer, with a new producer id. Each send is tagged with the generation of
the producer that took it, so that many failures seen from one broken
producer replace it once, and a late failure of an old one replaces nothing.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)


class ReplaceableProducer:
    """The current producer, its generation, and the replacing of it."""

    def __init__(
        self,
        new_producer: Callable[[], AIOKafkaProducer],
        *,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._new = new_producer
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.producer = new_producer()
        self.generation = 0
        self.replacements = 0
        self.closing = False
        self._born: weakref.WeakKeyDictionary[asyncio.Future[Any], int] = weakref.WeakKeyDictionary()
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect (retrying while the broker is not reachable yet)."""
        await self.producer.start()

    async def stop(self, timeout_s: float) -> None:
        """Flush and close the current producer within ``timeout_s``; drop the ones being retired."""
        self.closing = True
        try:
            await asyncio.wait_for(self.producer.stop(), timeout_s)
        except TimeoutError:
            log.warning("producer did not flush within %.0fs; closing with sends pending", timeout_s)
        for task in list(self._retiring):
            task.cancel()

    def tag(self, future: asyncio.Future[Any], generation: int) -> None:
        """Remember which producer took the send behind ``future``."""
        self._born[future] = generation

    def born(self, future: asyncio.Future[Any]) -> int | None:
        """The generation of the producer that took it (None: it never reached one)."""
        return self._born.get(future)

    async def replace(self, generation: int, why: str) -> None:
        """Replace the producer of ``generation`` (once, however many sends saw it break).

        The old one is stopped in the background; every send it had not
        delivered fails there, and whoever waits for it sends it again.
        """
        async with self._lock:
            if generation != self.generation or self.closing:
                return
            fresh = await self._start_fresh()
            if fresh is None:  # closing meanwhile
                return
            old, self.producer = self.producer, fresh
            self.generation += 1
            self.replacements += 1
            log.warning(
                "replaced the idempotent producer (%s)", why, extra={"replacements": self.replacements}
            )
            retire = asyncio.create_task(_retire(old))
            self._retiring.add(retire)
            retire.add_done_callback(self._retiring.discard)

    async def _start_fresh(self) -> AIOKafkaProducer | None:
        """A started producer, trying again while the broker is unreachable (a restart is when this runs)."""
        backoff = self.backoff_s
        while not self.closing:
            fresh = self._new()
            try:
                await fresh.start()
                return fresh
            except Exception as exc:
                log.warning("cannot start a replacement producer yet (%s); retrying in %.1fs", exc, backoff)
                await _retire(fresh)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
        return None

    def forget_topic(self, topic: str) -> None:
        """Stop asking the broker for a refused topic's metadata.

        aiokafka keeps every topic it was asked to send to in its metadata
        requests for ever (private ``_topics``), and logs an error for an
        invalid one at each refresh.
        """
        client = self.producer.client
        tracked = getattr(client, "_topics", None)
        if isinstance(tracked, set) and topic in tracked and len(tracked) > 1:
            client.set_topics(tracked - {topic})

    def knows(self, topic: str) -> bool:
        """Whether the current producer knows the partitions of ``topic``."""
        return bool(self.producer.client.cluster.partitions_for_topic(topic))


async def _retire(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 30)
    except Exception as exc:  # it was broken already: nothing more to save from it
        log.debug("stopping a replaced producer: %s", exc)


def retrieve_error(future: asyncio.Future[Any]) -> None:
    """Read a send's error as it completes, so that nobody waiting no longer makes it "never retrieved"."""
    if not future.cancelled():
        future.exception()
