"""Sends to topics whose partitions are not known yet, off the batch's path and in order per topic.

Learning a new topic's partitions takes a metadata round trip or, for a topic
that does not exist where auto-creation is off, the whole time limit. Sent
inline, the rest of the batch would wait behind it; so such sends wait on a
chain of their own per topic, and every later message to that topic joins
the chain until it drains, which keeps per-key order.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiokafka.errors import ProducerClosed, UnknownTopicOrPartitionError

from altlas.producers.swap import ReplaceableProducer, retrieve_error

if TYPE_CHECKING:
    from altlas.producers.publisher import OutboundMessage


class SideChains:
    """One chain of pending sends per topic whose partitions were unknown."""

    def __init__(self, producers: ReplaceableProducer, metadata_timeout_s: float) -> None:
        self.producers = producers
        self.metadata_timeout_s = metadata_timeout_s
        self._chains: dict[str, asyncio.Task[None]] = {}

    def waiting(self, topic: str) -> bool:
        """Whether sends to ``topic`` are still queued on its chain."""
        return topic in self._chains

    def send(self, msg: OutboundMessage) -> asyncio.Future[Any]:
        """Queue ``msg`` behind the earlier ones to its topic; the future resolves on its ack."""
        outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        outer.add_done_callback(retrieve_error)  # a caller whose time ran out no longer awaits it
        before = self._chains.get(msg.topic)
        chain = asyncio.create_task(self._send_after(before, msg, outer))
        self._chains[msg.topic] = chain
        chain.add_done_callback(lambda task: self._done(msg.topic, task))
        return outer

    def cancel(self) -> None:
        """Give up every chain (shutting down)."""
        for chain in list(self._chains.values()):
            chain.cancel()

    def _done(self, topic: str, task: asyncio.Task[None]) -> None:
        if self._chains.get(topic) is task:
            del self._chains[topic]

    async def _send_after(
        self, before: asyncio.Task[None] | None, msg: OutboundMessage, outer: asyncio.Future[Any]
    ) -> None:
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        producer, generation = self.producers.producer, self.producers.generation
        try:
            inner = await asyncio.wait_for(
                producer.send(msg.topic, msg.value, key=msg.key, headers=list(msg.headers)),
                self.metadata_timeout_s,
            )
        except TimeoutError:  # judged like the broker's own answer for a topic it does not know
            _fail(outer, UnknownTopicOrPartitionError(f"no partitions known for {msg.topic}"))
            return
        except asyncio.CancelledError:
            _fail(outer, ProducerClosed())
            raise
        except Exception as exc:
            _fail(outer, exc)
            return
        self.producers.tag(outer, generation)
        inner.add_done_callback(lambda f: _copy(f, outer))


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _copy(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(source.result())
