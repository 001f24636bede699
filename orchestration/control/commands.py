"""Model commands from Kafka: load, unload and status requests for named models, and cancels.

Every instance must see every command (each has its own models), so the
command consumer joins no group and starts at the end of the topic. Commands
can only name registry ids: a path, or any other id the registry does not
hold, is logged and dropped and never reaches a loader. It gets no status event
either: the status topic is compacted by model id, so an answer keyed by a made-up
id would stay in it for ever, and anyone able to produce commands could fill it.
A registry id with an unknown version is answered ``failed`` under its own key.
The topic itself should be writable only by operators (docs/operations.md, ACLs).

``cancel`` ends the request ``params.request_id`` on the model wherever this
instance holds it (``InFlight``: queued in a lane, or generating in a decode
loop); the request gets its error result with what it had generated, and the
command a status event saying how many it reached (0 here is harmless: another
instance may hold it, or it already ended).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

from altlas.models.errors import UnknownModelError
from altlas.models.manager import ModelEvent, ModelManager
from altlas.orchestration.control.status_events import StatusReporter
from altlas.orchestration.execution.in_flight import InFlight
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import AltlasError
from altlas.schemas.types import ModelAction, ModelCommand

log = logging.getLogger(__name__)


class CommandHandler:
    """Consumes ModelCommand events and acts on the local model manager."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        topic: str,
        codec: AvroCodec,
        manager: ModelManager,
        status: StatusReporter,
        *,
        in_flight: InFlight | None = None,
    ) -> None:
        self.topic = topic
        self.in_flight = in_flight if in_flight is not None else InFlight()
        self.codec = codec
        self.manager = manager
        self.status = status
        self._consumer = AIOKafkaConsumer(topic, group_id=None, auto_offset_reset="latest", **client_kwargs)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Connect and position at the end of the topic."""
        await self._consumer.start()
        # Resolve "latest" now, so a command sent right after start-up is seen.
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)

    async def run(self, stop: asyncio.Event) -> None:
        """Handle commands until ``stop``; each runs in its own task (a load may take long)."""
        while not stop.is_set():
            batches = await self._consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for rec in records:
                    task = asyncio.create_task(self._handle_bytes(rec.value))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Finish running commands and disconnect."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        await self._consumer.stop()

    async def _handle_bytes(self, value: bytes | None) -> None:
        try:
            command = self.codec.decode_record(value or b"", ModelCommand)
        except AltlasError as exc:
            log.warning("ignoring undecodable model command: %s", exc)
            return
        await self.handle(command)

    async def handle(self, command: ModelCommand) -> None:
        """Act on one command for a registry id (reported as a status event); drop any other."""
        ref = command.model_id if not command.model_version else f"{command.model_id}@{command.model_version}"
        cid = command.command_id
        if command.model_id not in {spec.id for spec in self.manager.registry}:
            log.warning(
                "dropping a model command for an id not in the registry",
                extra={
                    "model_id": command.model_id[:200],
                    "command_id": cid[:200],
                    "action": command.action.value,
                },
            )
            return
        try:
            spec = self.manager.registry.get(ref)
        except UnknownModelError as exc:
            version = command.model_version or ""
            self.status.report(
                ModelEvent(command.model_id, version, "failed", message=str(exc), command_id=cid)
            )
            return
        if command.action is ModelAction.LOAD:
            if self.manager.is_loaded(spec.key):
                self._report_current(spec.key, cid)
            else:
                await self.manager.load(spec.key, command_id=cid)
        elif command.action is ModelAction.UNLOAD:
            if self.manager.is_loaded(spec.key):
                await self.manager.unload(spec.key, command_id=cid)
            else:
                self._report_current(spec.key, cid)
        elif command.action is ModelAction.CANCEL:
            self._cancel(command, spec.key)
        else:
            self._report_current(spec.key, cid)

    def _cancel(self, command: ModelCommand, key: str) -> None:
        """End the named request here, and answer with the model's status and what was reached."""
        request_id = command.params.get("request_id", "")
        if not request_id:
            self._report_current(key, command.command_id, "a cancel names its request in params.request_id")
            return
        reached = self.in_flight.cancel(
            command.model_id,
            request_id,
            f"cancelled by model command {command.command_id[:200]}",
            version=command.model_version or None,
        )
        shown = request_id[:200]
        message = f"cancelled request {shown}" if reached else f"request {shown} is not running here"
        attributes = {"request_id": shown, "cancelled": str(reached)}
        self._report_current(key, command.command_id, message, attributes)

    def _report_current(
        self, key: str, command_id: str, message: str | None = None, attributes: dict[str, str] | None = None
    ) -> None:
        current = self.manager.status(key)
        self.status.report(
            ModelEvent(
                current.model_id,
                current.model_version,
                current.state,
                memory_bytes=current.memory_bytes,
                load_ms=current.load_ms,
                message=current.message if message is None else message,
                command_id=command_id,
            ),
            attributes,
        )
