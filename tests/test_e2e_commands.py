"""Model commands over Kafka: load, unload, status, and LRU eviction under a memory budget."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest
import yaml

from altlas.orchestration.clients.client import AltlasClient, TopicReader
from altlas.schemas.types import ModelAction, ModelCommand, ModelState, ModelStatus
from tests.conftest import connect, isolated_settings, serving


async def _statuses(
    client: AltlasClient, reader: TopicReader, until: set[str], timeout_s: float = 30
) -> list[ModelStatus]:
    """Status events until every command id in ``until`` got a terminal answer."""
    terminal = {ModelState.READY, ModelState.FAILED, ModelState.UNLOADED, ModelState.EVICTED}
    got: list[ModelStatus] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += [client.decode_status(r.value) for r in await reader.read(0.3)]
        answered = {s.command_id for s in got if s.state in terminal}
        if until <= answered:
            break
    return got


async def _command(client: AltlasClient, action: str, model: str) -> str:
    return await _command_for(client, action, model)


async def _command_for(client: AltlasClient, action: str, model: str, version: str = "") -> str:
    cid = uuid.uuid4().hex
    cmd = ModelCommand(command_id=cid, action=ModelAction(action), model_id=model, model_version=version)
    await client.publish(cmd, client.topics.model_commands, key=model)
    return cid


async def test_load_unload_and_eviction_commands_produce_matching_status_events(
    kafka_bootstrap: str, tmp_path: Path, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="altlas.orchestration.control.commands")
    # Two models of 40 MiB each (declared) under a 60 MiB budget: loading one evicts the other.
    registry = tmp_path / "models.yaml"
    entry = {"task": "vision.classify", "backend": "onnx", "path": str(models_dir / "mean_color.onnx")}
    registry.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"id": "a", **entry, "metadata": {"memory_mb": 40}},
                    {"id": "b", **entry, "metadata": {"memory_mb": 40}},
                ]
            }
        )
    )
    settings = isolated_settings(kafka_bootstrap, registry, models={"memory_budget_mb": 60})
    async with serving(settings) as run:
        async with (
            connect(settings) as client,
            client.reader(settings.topics.model_status) as reader,
        ):
            load_a = await _command(client, "load", "a")
            events = await _statuses(client, reader, {load_a})
            states = [(s.model_id, s.state) for s in events if s.command_id == load_a]
            assert states == [("a", ModelState.LOADING), ("a", ModelState.READY)]
            ready = next(s for s in events if s.state is ModelState.READY)
            assert ready.memory_bytes == 40 * 2**20 and ready.load_ms is not None
            assert ready.instance_id == settings.instance_id

            load_b = await _command(client, "load", "b")
            events = await _statuses(client, reader, {load_b})
            seq = [(s.model_id, s.state) for s in events]
            assert ("a", ModelState.EVICTED) in seq
            assert seq.index(("a", ModelState.EVICTED)) < seq.index(("b", ModelState.READY))

            status_a = await _command(client, "status", "a")
            unload_b = await _command(client, "unload", "b")
            events = await _statuses(client, reader, {status_a, unload_b})
            by_cmd = {s.command_id: s for s in events}
            assert by_cmd[status_a].state is ModelState.EVICTED
            assert by_cmd[unload_b].state is ModelState.UNLOADED and by_cmd[unload_b].model_id == "b"

            # An id the registry does not hold is dropped: no status event, so no key that would stay in
            # the compacted topic for ever. A command sent after it is still answered.
            bad = await _command(client, "load", "../../etc/passwd")
            bad_version = await _command_for(client, "load", "a", version="99")
            status_b = await _command(client, "status", "b")
            events = await _statuses(client, reader, {status_b, bad_version})
            assert bad not in {s.command_id for s in events}
            assert {s.model_id for s in events} <= {"a", "b"}
            refused = next(s for s in events if s.command_id == bad_version)
            assert refused.state is ModelState.FAILED and refused.model_id == "a"
            assert "not in the registry" in refused.message
            assert any(
                r.getMessage() == "dropping a model command for an id not in the registry"
                and getattr(r, "model_id", None) == "../../etc/passwd"
                for r in caplog.records
            )
    assert run.orchestrator.manager.loaded() == []
