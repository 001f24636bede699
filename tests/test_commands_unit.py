"""Model commands (load, unload, status, cancel) acted on by the command handler, with in-process fakes.

No broker and no model files: the manager is the real one, building fake runtimes that load at
once (or fail the way a corrupt file or a driver error would), and status events land in a list
instead of on the status topic. test_e2e_commands.py keeps the same claims over a real broker.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import pytest

from altlas.models.manager import ModelEvent, ModelManager
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.orchestration.control.commands import CommandHandler
from altlas.orchestration.execution.in_flight import InFlight
from altlas.schemas.codec import AvroCodec
from altlas.schemas.types import ModelAction, ModelCommand

CODEC = AvroCodec()
SCHEMA = Path(__file__).parent.parent / "schemas" / "altlas.events.ModelCommand.avsc"
REGISTRY = ModelRegistry.from_dict(
    {
        "models": [
            {"id": id_, "task": "vision.classify", "backend": "onnx", "path": "absent.onnx"}
            for id_ in ("a", "broken", "sticky")
        ]
    }
)


class FakeRuntime:
    """Loads at once; ``broken`` fails to load and ``sticky`` fails to unload."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.unloaded = False

    def load(self) -> None:
        if self.spec.id == "broken":
            raise RuntimeError("weights are corrupt")

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        return list(inputs)

    def unload(self) -> None:
        if self.spec.id == "sticky":
            raise RuntimeError("driver refused to free the memory")
        self.unloaded = True

    def memory_bytes(self) -> int:
        return 1024


class StatusLog:
    """Stands in for the status reporter: keeps the events instead of publishing them."""

    def __init__(self) -> None:
        self.events: list[ModelEvent] = []
        self.attributes: list[dict[str, str]] = []  # per event
        self.changed = asyncio.Event()

    def on_event(self, event: ModelEvent) -> None:
        self.report(event)

    def report(self, event: ModelEvent, attributes: Any = None, resources: Any = None) -> None:
        self.events.append(event)
        self.attributes.append(attributes or {})
        self.changed.set()

    async def until(self, check: Callable[[], bool], timeout_s: float = 5) -> bool:
        """Whether ``check`` holds within ``timeout_s``, looked at after every event."""
        try:
            async with asyncio.timeout(timeout_s):
                while not check():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    def answers(self, command_id: str) -> list[tuple[str, str]]:
        """(model id, state) of each event that answers ``command_id``, in order."""
        return [(e.model_id, e.state) for e in self.events if e.command_id == command_id]


@dataclass
class Parts:
    handler: CommandHandler
    manager: ModelManager
    status: StatusLog
    runtimes: list[FakeRuntime]


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    """A handler wired as the service wires it: the manager's events and its own go to one status log."""
    status, runtimes = StatusLog(), []

    def factory(spec: ModelSpec) -> FakeRuntime:
        runtimes.append(FakeRuntime(spec))
        return runtimes[-1]

    manager = ModelManager(REGISTRY, listener=status.on_event, runtime_factory=factory)
    # The consumer is built but never started: these tests hand commands over directly.
    handler = CommandHandler(
        {"bootstrap_servers": "127.0.0.1:9"},
        "commands",
        CODEC,
        manager,
        status,  # type: ignore[arg-type]
    )
    yield Parts(handler, manager, status, runtimes)
    await handler.stop()
    await manager.close()


def command(
    action: str, model: str, version: str = "", cid: str | None = None, params: dict[str, str] | None = None
) -> ModelCommand:
    return ModelCommand(
        command_id=cid or f"{action}-{model}",
        action=ModelAction(action),
        model_id=model,
        model_version=version,
        params=params or {},
    )


async def test_load_loads_the_model_and_reports_loading_then_ready(parts: Parts) -> None:
    await parts.handler.handle(command("load", "a"))
    assert parts.status.answers("load-a") == [("a", "loading"), ("a", "ready")]
    assert parts.manager.loaded() == ["a@1"]


async def test_load_of_a_loaded_model_reports_ready_without_loading_again(parts: Parts) -> None:
    await parts.manager.load("a")
    await parts.handler.handle(command("load", "a"))
    assert parts.status.answers("load-a") == [("a", "ready")]
    assert len(parts.runtimes) == 1


async def test_unload_frees_a_loaded_model_and_reports_unloaded(parts: Parts) -> None:
    await parts.manager.load("a")
    await parts.handler.handle(command("unload", "a"))
    assert parts.status.answers("unload-a") == [("a", "unloaded")]
    assert parts.manager.loaded() == [] and parts.runtimes[0].unloaded


async def test_unload_of_a_model_not_loaded_reports_its_state_and_touches_nothing(parts: Parts) -> None:
    await parts.handler.handle(command("unload", "a"))
    assert parts.status.answers("unload-a") == [("a", "unloaded")]
    assert parts.runtimes == []


async def test_status_reports_the_current_state_without_loading(parts: Parts) -> None:
    await parts.manager.load("a")
    await parts.handler.handle(command("status", "a"))
    (event,) = [e for e in parts.status.events if e.command_id == "status-a"]
    assert (event.state, event.model_version, event.memory_bytes) == ("ready", "1", 1024)
    assert event.load_ms is not None
    await parts.handler.handle(command("status", "sticky"))
    assert parts.status.answers("status-sticky") == [("sticky", "unloaded")]
    assert len(parts.runtimes) == 1


async def test_an_id_not_in_the_registry_is_dropped_without_a_status_event(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="altlas.orchestration.control.commands")
    await parts.handler.handle(command("load", "../../etc/passwd"))
    # A status keyed by a made-up id would stay in the compacted status topic for ever.
    assert parts.status.events == [] and parts.runtimes == []
    dropped = [r for r in caplog.records if r.name == "altlas.orchestration.control.commands"]
    assert [getattr(r, "model_id", None) for r in dropped] == ["../../etc/passwd"]


async def test_an_unknown_version_of_a_registry_id_is_answered_failed(parts: Parts) -> None:
    await parts.handler.handle(command("load", "a", version="99"))
    (event,) = parts.status.events
    assert (event.model_id, event.model_version, event.state) == ("a", "99", "failed")
    assert event.command_id == "load-a" and "not in the registry" in event.message
    assert parts.runtimes == []


async def test_a_model_that_fails_to_load_is_answered_failed_with_the_reason(parts: Parts) -> None:
    await parts.handler.handle(command("load", "broken"))  # returns: the failure is a status, not a raise
    assert parts.status.answers("load-broken") == [("broken", "loading"), ("broken", "failed")]
    assert parts.status.events[-1].message == "weights are corrupt"
    assert parts.manager.loaded() == []


@dataclass
class _Record:
    value: bytes | None


class ScriptedConsumer:
    """Stands in for the command consumer: hands over one script of records, then nothing."""

    def __init__(self, values: list[bytes | None]) -> None:
        self.values = values

    async def getmany(self, timeout_ms: int = 0) -> dict[str, list[_Record]]:
        if self.values:
            batch, self.values = [_Record(v) for v in self.values], []
            return {"commands-0": batch}
        await asyncio.sleep(timeout_ms / 1000)
        return {}


async def test_no_command_stops_the_loop_and_a_later_one_is_still_answered(parts: Parts) -> None:
    await parts.manager.load("sticky")
    script = [
        b"not avro at all",
        None,  # a tombstone
        CODEC.encode_record(command("unload", "sticky")),  # the runtime raises while unloading
        CODEC.encode_record(command("load", "broken")),
        CODEC.encode_record(command("status", "a")),
    ]
    real, parts.handler._consumer = parts.handler._consumer, ScriptedConsumer(script)  # type: ignore[assignment]
    stop = asyncio.Event()
    loop = asyncio.create_task(parts.handler.run(stop))
    try:
        assert await parts.status.until(lambda: bool(parts.status.answers("status-a")))
        assert await parts.status.until(lambda: ("broken", "failed") in parts.status.answers("load-broken"))
        assert not loop.done(), "the command loop ended"
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
        parts.handler._consumer = real
    assert parts.status.answers("status-a") == [("a", "unloaded")]


def _hold(in_flight: InFlight, model: str, request_id: str, stopped: list[tuple[str, str]]) -> None:
    """A request held by a lane of ``model``, whose stop records (request id, reason)."""
    in_flight.hold(REGISTRY.get(model), request_id, lambda reason: stopped.append((request_id, reason)))


async def test_cancel_ends_the_named_request_on_that_model_and_says_so(parts: Parts) -> None:
    stopped: list[tuple[str, str]] = []
    in_flight = parts.handler.in_flight
    _hold(in_flight, "a", "r1", stopped)
    _hold(in_flight, "a", "r2", stopped)
    _hold(in_flight, "sticky", "r1", stopped)  # the same id on another model is not named
    await parts.handler.handle(command("cancel", "a", params={"request_id": "r1"}))
    assert stopped == [("r1", "cancelled by model command cancel-a")]
    (event,) = parts.status.events
    assert (event.model_id, event.state, event.command_id) == ("a", "unloaded", "cancel-a")
    assert event.message == "cancelled request r1"
    assert parts.status.attributes == [{"request_id": "r1", "cancelled": "1"}]
    assert parts.runtimes == []  # a cancel never loads the model


async def test_a_cancel_for_a_request_not_held_here_is_answered_and_ends_nothing(parts: Parts) -> None:
    stopped: list[tuple[str, str]] = []
    _hold(parts.handler.in_flight, "a", "r2", stopped)
    await parts.handler.handle(command("cancel", "a", params={"request_id": "no-such-request"}))
    await parts.handler.handle(command("cancel", "a", cid="no-id"))  # names no request at all
    assert stopped == [] and len(parts.handler.in_flight) == 1
    assert [e.message for e in parts.status.events] == [
        "request no-such-request is not running here",
        "a cancel names its request in params.request_id",
    ]
    assert parts.status.attributes[0] == {"request_id": "no-such-request", "cancelled": "0"}


async def test_a_request_cancelled_on_its_way_to_the_runtime_is_stopped_when_it_gets_there() -> None:
    stopped: list[str] = []
    in_flight = InFlight()
    held = in_flight.hold(REGISTRY.get("a"), "r1", None)  # left the queue, not in a decode loop yet
    assert in_flight.cancel("a", "r1", "cancelled by model command c1") == 1
    held.handed_over(stopped.append)
    assert stopped == ["cancelled by model command c1"]
    held.release()
    assert len(in_flight) == 0 and in_flight.cancel("a", "r1", "again") == 0


def test_an_older_reader_reads_a_cancel_command_as_status() -> None:
    """``cancel`` is appended to ModelAction: a reader of the earlier schema falls back to the default."""
    new = json.loads(SCHEMA.read_text())
    old = copy.deepcopy(new)
    old["fields"][1]["type"]["symbols"].remove("cancel")
    record = command("cancel", "a", params={"request_id": "r1"}).model_dump(mode="json")
    record["requested_at"] = 0
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(new), record)
    out.seek(0)
    read = fastavro.schemaless_reader(out, fastavro.parse_schema(new), fastavro.parse_schema(old))
    assert read["action"] == "status" and read["params"] == {"request_id": "r1"}
