"""Orchestration on the real broker: strategies, routes, fallback, ensembles, circuits, cache, eviction."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from altlas.models.runtime import BACKENDS
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.types import Classification, ModelState, ResultStatus
from tests.builders import MEAN_COLOR_LABELS, expected_mean_color, mean_color_variant
from tests.conftest import connect, isolated_settings, serving
from tests.images import solid

RED = (230, 30, 30)


@pytest.fixture(scope="session")
def variants(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {
        "fast": models_dir / "mean_color.onnx",
        "slow": mean_color_variant(root / "slow.onnx", slow_layers=100, slow_width=1024),  # ~3 ms > jitter
        "alt": mean_color_variant(root / "alt.onnx", permute=[3, 2, 1, 0]),
        "broken": models_dir / "corrupt.onnx",
    }


def _entry(model_id: str, path: Path, **metadata: Any) -> dict[str, Any]:
    return {
        "id": model_id, "task": "vision.classify", "backend": "onnx", "path": str(path),
        "params": {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"}, "metadata": metadata,
    }  # fmt: skip


def _registry(tmp: Path, doc: dict[str, Any]) -> Path:
    path = tmp / f"registry-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def _ask(client: AltlasClient, requests: list[Any], timeout_s: float = 60) -> dict[str, Any]:
    async with client.reader(client.topics.results("vision")) as reader:
        await client.send_many(requests)
        return await client.collect(reader, "vision", [r.request_id for r in requests], timeout_s)


def _top(result: Any) -> str:
    assert result.status in (ResultStatus.OK, ResultStatus.PARTIAL), result.error
    assert isinstance(result.output, Classification)
    return str(result.output.labels[0].label)


@pytest.fixture
async def strategies(
    kafka_bootstrap: str, tmp_path: Path, variants: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> Any:
    # "glacial" hangs by time, not by compute a faster CPU would finish inside the deadline.
    monkeypatch.setitem(BACKENDS, "hanging-onnx", "tests.hanging_model:HangingOnnxRuntime")
    doc = {
        "models": [
            _entry("fast", variants["fast"], accuracy=0.80, cost=1.0, latency_ms=5),
            _entry("slow", variants["slow"], accuracy=0.95, cost=5.0, latency_ms=3),
            _entry("alt", variants["alt"], accuracy=0.50, cost=0.5, latency_ms=5),
            _entry("broken", variants["broken"], accuracy=0.99, cost=0.1),
            {**_entry("glacial", variants["fast"]), "backend": "hanging-onnx"},
        ],
        "defaults": {"vision.classify": "fast"},
        "routes": {
            "resilient": {
                "task": "vision.classify",
                "strategy": "fallback",
                "candidates": ["broken", "fast"],
            },
            "panel": {
                "task": "vision.classify",
                "strategy": "ensemble",
                "candidates": ["fast", "alt", "slow"],
            },
        },
    }
    settings = isolated_settings(kafka_bootstrap, _registry(tmp_path, doc), modalities=["vision"])
    async with serving(settings) as run:
        client = connect(settings)
        await client.start()
        try:
            yield run, client
        finally:
            await client.stop()


async def test_performance_accuracy_and_cost_strategies_pick_by_what_they_promise(strategies: Any) -> None:
    run, client = strategies
    # Measure both candidates first (explicit requests), as traffic would: in rounds, since
    # a model's first batch is its warm-up and not timed.
    for _ in range(3):
        await _ask(
            client,
            [
                make_request("vision", "classify", solid(RED), model=m, params={"cache": False})
                for m in ["fast", "slow"]
            ],
        )
    health = run.orchestrator.health
    registry = run.orchestrator.registry
    assert health.latency_ms(registry.get("slow")) > health.latency_ms(registry.get("fast"))

    def req(strategy: str, **params: Any) -> Any:
        return make_request(
            "vision", "classify", solid(RED), params={"strategy": strategy, "cache": False, **params}
        )

    asks = {
        "performance": req("performance", models=["slow", "fast"]),
        "accuracy": req("accuracy", models=["fast", "slow", "alt"]),
        "cost": req("cost", models=["fast", "slow", "alt"]),
        "cost_floor": req("cost", models=["fast", "slow", "alt"], min_accuracy=0.9),
    }
    results = await _ask(client, list(asks.values()))
    chosen = {name: results[r.request_id].model_id for name, r in asks.items()}
    assert chosen == {"performance": "fast", "accuracy": "slow", "cost": "alt", "cost_floor": "slow"}
    assert results[asks["performance"].request_id].attributes["strategy"] == "performance"


async def test_performance_tries_an_untimed_model_and_then_keeps_the_faster_one(strategies: Any) -> None:
    run, client = strategies
    # "slow" declares itself faster (3 ms vs 5 ms) and is listed first: without trying
    # "fast" once, the strategy would never learn that the declaration is wrong.
    for model in ["slow", "fast"]:
        await run.orchestrator.manager.load(model)  # load cost is not what is compared here
    chosen = []
    for i in range(8):
        request = make_request(
            "vision",
            "classify",
            solid((i, 9, 9)),
            params={"strategy": "performance", "models": ["slow", "fast"], "cache": False},
        )
        chosen.append((await _ask(client, [request]))[request.request_id].model_id)
    assert "fast" in chosen[:4], chosen  # explored early (a first batch is a warm-up, not timed)
    assert chosen[-4:] == ["fast"] * 4, chosen  # and kept, once measured


async def test_a_fallback_route_answers_with_the_next_model_and_says_which_failed(strategies: Any) -> None:
    _, client = strategies
    request = make_request("vision", "classify", solid(RED), model="route:resilient")
    result = (await _ask(client, [request]))[request.request_id]
    assert result.status is ResultStatus.OK and result.model_id == "fast"
    assert _top(result) == MEAN_COLOR_LABELS[int(np.argmax(expected_mean_color(RED)))]
    assert result.attributes["route"] == "resilient"
    assert result.attributes["fallback_failed"].startswith("broken@1: MODEL_UNAVAILABLE")
    assert result.attributes["fallback_tried"] == "broken@1,fast@1"


async def test_an_ensemble_votes_and_lists_every_member(strategies: Any) -> None:
    _, client = strategies
    request = make_request(
        "vision", "classify", solid(RED), model="route:panel", params={"aggregate": "majority"}
    )
    result = (await _ask(client, [request]))[request.request_id]
    members = {m.model_id: m for m in result.members}
    assert set(members) == {"fast", "alt", "slow"}
    votes = {name: _top(m) for name, m in members.items()}
    assert votes["fast"] == votes["slow"] != votes["alt"]  # the permuted model disagrees
    assert _top(result) == votes["fast"]  # two of three win
    assert result.attributes["ensemble_answered"] == "3"
    # Score-averaged voting combines the members' probabilities instead.
    averaged = make_request(
        "vision", "classify", solid(RED), model="route:panel", params={"aggregate": "mean", "top_k": 4}
    )
    result = (await _ask(client, [averaged]))[averaged.request_id]
    got = {lab.label: lab.score for lab in result.output.labels}
    expect: dict[str, float] = {}
    for member in result.members:
        for lab in member.output.labels:
            expect[lab.label] = expect.get(lab.label, 0.0) + lab.score / 3
    assert got == pytest.approx(expect, abs=1e-6)


async def test_an_ensemble_deadline_answers_with_what_finished_flagged_partial(strategies: Any) -> None:
    _, client = strategies
    params = {"strategy": "ensemble", "models": ["fast", "glacial"], "timeout_ms": 250, "cache": False}
    request = make_request("vision", "classify", solid(RED), params=params)
    result = (await _ask(client, [request]))[request.request_id]
    assert result.status is ResultStatus.PARTIAL, result
    assert (
        result.model_id == "fast"
        and _top(result) == MEAN_COLOR_LABELS[int(np.argmax(expected_mean_color(RED)))]
    )
    failed = [m for m in result.members if m.status is ResultStatus.ERROR]
    assert [m.model_id for m in failed] == ["glacial"] and failed[0].error.code == "DEADLINE_EXCEEDED"


async def test_cache_hits_on_repeats_and_misses_after_a_version_change(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"])
    async with serving(settings) as run:
        image = solid((12, 200, 40))
        async with connect(settings) as client:
            first = await client.request(make_request("vision", "classify", image, model="mean-color@1"))
            again = await client.request(make_request("vision", "classify", image, model="mean-color@1"))
            newer = await client.request(make_request("vision", "classify", image, model="mean-color@2"))
            opted_out = await client.request(
                make_request("vision", "classify", image, model="mean-color@1", params={"cache": False})
            )
            other_params = await client.request(
                make_request("vision", "classify", image, model="mean-color@1", params={"top_k": 2})
            )
    assert "cache" not in first.attributes and again.attributes["cache"] == "hit"
    assert again.output == first.output and again.timings.batch_size == 0
    assert "cache" not in newer.attributes and newer.model_version == "2"
    assert "cache" not in opted_out.attributes and "cache" not in other_params.attributes
    assert run.orchestrator.metrics.cache.labels("hit")._value.get() == 1


async def test_a_circuit_opens_after_failures_and_closes_when_the_model_recovers(
    kafka_bootstrap: str, tmp_path: Path, variants: dict[str, Path]
) -> None:
    flaky = tmp_path / "flaky.onnx"
    shutil.copy(variants["broken"], flaky)
    settings = isolated_settings(
        kafka_bootstrap, _registry(tmp_path, {"models": [_entry("flaky", flaky)]}), modalities=["vision"],
        routing={"circuit_failures": 2, "circuit_cooldown_s": 1.0}, cache={"enabled": False},
    )  # fmt: skip
    async with serving(settings):
        async with connect(settings) as client:
            async with client.reader(settings.topics.model_status) as statuses:
                failures = [
                    await client.request(make_request("vision", "classify", solid(RED), model="flaky"))
                    for _ in range(2)
                ]
                skipped = await client.request(make_request("vision", "classify", solid(RED), model="flaky"))
                shutil.copy(variants["fast"], flaky)  # the operator fixes the model file
                await asyncio.sleep(1.2)
                healed = await client.request(make_request("vision", "classify", solid(RED), model="flaky"))
                deadline = time.monotonic() + 10
                states: list[ModelState] = []
                while ModelState.CIRCUIT_CLOSED not in states and time.monotonic() < deadline:
                    states += [client.decode_status(r.value).state for r in await statuses.read(0.5)]
    assert [f.error.code for f in failures] == ["MODEL_UNAVAILABLE", "MODEL_UNAVAILABLE"]
    assert skipped.error.code == "MODEL_UNAVAILABLE" and "circuit is open" in skipped.error.message
    assert healed.status is ResultStatus.OK
    assert states.index(ModelState.CIRCUIT_OPEN) < states.index(ModelState.CIRCUIT_CLOSED)


async def test_under_memory_pressure_a_model_with_pending_requests_is_kept(
    kafka_bootstrap: str, tmp_path: Path, variants: dict[str, Path]
) -> None:
    # A is the cheapest to reload, so cost-aware eviction would pick it -- unless its requests are waiting.
    doc = {"models": [
        _entry("a", variants["slow"], memory_mb=40, load_ms=10, max_batch=2),
        _entry("b", variants["fast"], memory_mb=40, load_ms=5000),
        _entry("c", variants["alt"], memory_mb=40, load_ms=5000),
    ]}  # fmt: skip
    settings = isolated_settings(
        kafka_bootstrap, _registry(tmp_path, doc), modalities=["vision"], models={"memory_budget_mb": 100},
        cache={"enabled": False},
    )  # fmt: skip
    async with serving(settings) as run:
        manager = run.orchestrator.manager
        await manager.load("a")
        await manager.load("b")
        async with connect(settings) as client:
            requests = [make_request("vision", "classify", solid((i, 0, 0)), model="a") for i in range(20)]
            requests.append(make_request("vision", "classify", solid(RED), model="c"))
            async with client.reader(settings.topics.results("vision")) as reader:
                for req in requests:  # one key: one partition, one fetch
                    await client._producer.send(
                        settings.topics.requests("vision"), client.codec.encode_record(req), key=b"k"
                    )
                await client._producer.flush()
                results = await client.collect(reader, "vision", [r.request_id for r in requests], 60)
    assert all(r.status is ResultStatus.OK for r in results.values()) and len(results) == 21
    states = {key: manager.status(key).state for key in ("a@1", "b@1", "c@1")}
    assert states["b@1"] == "evicted", states
    assert states["a@1"] != "evicted", states


def test_an_ensemble_decodes_its_payload_once_for_every_member(models_dir: Path) -> None:
    """Each member preprocesses for its own model, from one decode of the payload."""
    from unittest import mock

    from altlas.models.registry import ModelSpec
    from altlas.orchestration.execution.preparation_pool import prepare_each
    from altlas.pipelines import image
    from altlas.pipelines.image_classification import ImageClassificationPipeline
    from tests.images import solid

    specs = [
        ModelSpec(
            f"m{i}",
            "1",
            "vision.classify",
            "onnx",
            models_dir / "mean_color.onnx",
            params={"preprocess": {"resize": 4 + i}},
        )
        for i in range(3)
    ]
    pipeline = ImageClassificationPipeline()
    payload = solid((10, 20, 30), size=32)
    with mock.patch.object(image, "_decode_image", wraps=image._decode_image) as decode:
        prepared = prepare_each([(pipeline, payload, {}, spec) for spec in specs], together=True)
        assert decode.call_count == 1
        alone = [pipeline.prepare(payload, {}, spec) for spec in specs]
        assert decode.call_count == 4  # outside a plan, every call decodes
    for together, single in zip(prepared, alone, strict=True):
        assert not isinstance(together, BaseException) and together.data.shape == single.data.shape
        assert (together.data == single.data).all()
    unreadable = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
    broken = prepare_each([(pipeline, unreadable, {}, spec) for spec in specs], together=True)
    assert all(isinstance(b, Exception) for b in broken)  # one decode error, given to every member
