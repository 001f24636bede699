"""Model-status events: from the manager's callbacks to the compacted status topic."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from altlas.models.manager import ModelEvent
from altlas.producers.publisher import Publisher
from altlas.schemas.types import ModelState, ModelStatus, ResourceSnapshot

log = logging.getLogger(__name__)


class StatusReporter:
    """Publishes ModelStatus events keyed by model id, in the order they happened."""

    def __init__(self, publisher: Publisher, topic: str, instance_id: str) -> None:
        self.publisher = publisher
        self.topic = topic
        self.instance_id = instance_id
        self._queue: asyncio.Queue[ModelStatus] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin publishing queued events."""
        self._task = asyncio.create_task(self._run())

    def on_event(self, event: ModelEvent) -> None:
        """Manager listener (called on the event loop)."""
        self.report(event)

    def report(
        self,
        event: ModelEvent,
        attributes: dict[str, str] | None = None,
        resources: ResourceSnapshot | None = None,
    ) -> None:
        """Queue one event for publishing."""
        self._queue.put_nowait(
            ModelStatus(
                model_id=event.model_id,
                model_version=event.model_version,
                state=ModelState(event.state),
                instance_id=self.instance_id,
                memory_bytes=event.memory_bytes,
                load_ms=event.load_ms,
                message=event.message,
                command_id=event.command_id,
                attributes=attributes or {},
                resources=resources,
            )
        )

    async def _run(self) -> None:
        while True:
            status = await self._queue.get()
            try:
                await self.publisher.send_and_wait(
                    self.publisher.message(status, self.topic, key=status.model_id)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # status is advisory: one lost event must not stop the reporter
                log.error("cannot publish model status %s/%s: %s", status.model_id, status.state.value, exc)
            finally:
                self._queue.task_done()

    async def close(self, timeout_s: float = 10.0) -> None:
        """Publish what is queued (bounded), then stop."""
        if self._task is None:
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        self._task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await self._task
