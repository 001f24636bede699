"""Streamed partial results: published in order while the model is still running."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from altlas.producers.publisher import OutboundMessage
from altlas.schemas.types import Record

log = logging.getLogger(__name__)


class ChunkStream:
    """Publishes one request's partial results in order, while its model is still running."""

    def __init__(
        self,
        enqueue: Callable[[OutboundMessage], Awaitable[asyncio.Future[Any]]],
        build: Callable[[Record], OutboundMessage],
    ) -> None:
        self._enqueue = enqueue
        self._build = build
        self._queue: asyncio.Queue[OutboundMessage | None] = asyncio.Queue()
        self.acks: list[asyncio.Future[Any]] = []
        self._task = asyncio.create_task(self._drain())

    def push(self, chunk: Record) -> None:
        """Called on the event loop for each chunk the model emits."""
        self._queue.put_nowait(self._build(chunk))

    async def _drain(self) -> None:
        while (msg := await self._queue.get()) is not None:
            try:
                self.acks.append(await self._enqueue(msg))
            except Exception as exc:  # a lost chunk is tolerable; the final result is not
                log.warning("dropping a streamed chunk for %s: %s", msg.topic, exc)

    async def close(self) -> list[asyncio.Future[Any]]:
        """Wait until every chunk is queued for sending; returns their ack futures."""
        self._queue.put_nowait(None)
        await self._task
        return self.acks
