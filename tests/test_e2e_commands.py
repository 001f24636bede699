"""Model commands over Kafka: load, unload, status, LRU eviction under a memory budget, and cancel."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import pytest
import yaml

from altlas.orchestration.clients.client import AltlasClient, TopicReader, make_request
from altlas.schemas.types import (
    ModelAction,
    ModelCommand,
    ModelState,
    ModelStatus,
    ResultStatus,
    TextChunk,
    TextGeneration,
    TextResult,
)
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


async def test_a_cancel_command_stops_a_long_generation_and_its_error_result_carries_its_text(
    kafka_bootstrap: str, tmp_path: Path, smollm2_gguf: Path
) -> None:
    pytest.importorskip("llama_cpp")
    registry = tmp_path / "models.yaml"
    smollm2 = {"id": "smollm2", "tasks": ["text.generate"], "backend": "llama.cpp", "path": str(smollm2_gguf)}
    registry.write_text(yaml.safe_dump({"models": [{**smollm2, "params": {"n_ctx": 2048}}]}))
    settings = isolated_settings(kafka_bootstrap, registry, modalities=["text"])
    params = {"max_tokens": 1800, "temperature": 0, "stream": True, "timeout_ms": 300_000}
    request = make_request("text", "generate", "Once upon a time", params=params, model="smollm2")
    async with (
        serving(settings),
        connect(settings) as client,
        client.reader(client.topics.results("text")) as results,
        client.reader(settings.topics.model_status) as statuses,
    ):
        await client.send(request)
        seen: list[TextResult] = []
        deadline = time.monotonic() + 120
        while len(seen) < 3 and time.monotonic() < deadline:  # it is generating: chunks arrive
            seen += [client.codec.decode_record(r.value, TextResult) for r in await results.read(0.3)]
        assert len(seen) >= 3 and all(r.status is ResultStatus.PARTIAL for r in seen)
        cancelled_at = time.monotonic()
        cid = uuid.uuid4().hex
        unknown = uuid.uuid4().hex
        for command_id, request_id in ((cid, request.request_id), (unknown, "no-such-request")):
            await client.publish(
                ModelCommand(
                    command_id=command_id,
                    action=ModelAction.CANCEL,
                    model_id="smollm2",
                    params={"request_id": request_id},
                ),
                client.topics.model_commands,
                key="smollm2",
            )
        while (not seen or seen[-1].status is ResultStatus.PARTIAL) and time.monotonic() < deadline:
            seen += [client.codec.decode_record(r.value, TextResult) for r in await results.read(0.3)]
        answered_in = time.monotonic() - cancelled_at
        answers = await _statuses(client, statuses, {cid, unknown})
    final = seen[-1]
    assert final.request_id == request.request_id and final.status is ResultStatus.ERROR
    assert final.error is not None and final.error.code == "DEADLINE_EXCEEDED"
    assert f"cancelled by model command {cid}" in final.error.message
    produced = int(final.attributes["completion_tokens"])
    assert 1 <= produced < 1800 and answered_in < 30  # far from its 1800 tokens: it stopped
    chunks = sorted(
        (r.output for r in seen[:-1] if isinstance(r.output, TextChunk)), key=lambda c: c.sequence
    )
    assert final.attributes["partial_text"].startswith("".join(c.text for c in chunks)[:100])
    assert not isinstance(final.output, TextGeneration)
    by_cmd = {s.command_id: s for s in answers}
    assert by_cmd[cid].attributes == {"request_id": request.request_id, "cancelled": "1"}
    assert by_cmd[unknown].attributes == {"request_id": "no-such-request", "cancelled": "0"}
    assert by_cmd[unknown].message == "request no-such-request is not running here"
