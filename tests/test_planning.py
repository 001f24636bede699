"""The `performance` strategy's arithmetic, without a broker: probes, measurement, spreading a backlog."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from altlas.models.errors import GenerationCancelled, ModelError
from altlas.models.manager import ModelManager
from altlas.models.registry import ModelRegistry
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.routing.health import ModelHealth
from altlas.orchestration.routing.planning import Planner
from altlas.pipelines.image_classification import ImageClassificationPipeline
from tests.images import solid


def _planner(tmp_path: Path) -> tuple[Planner, ModelHealth, Counter[str]]:
    entry = {"task": "vision.classify", "backend": "onnx", "path": str(tmp_path / "absent.onnx")}
    registry = ModelRegistry.from_dict(
        {
            "models": [
                {"id": "slow", **entry, "metadata": {"latency_ms": 1.0, "load_ms": 50}},
                {"id": "fast", **entry, "metadata": {"latency_ms": 1.0, "load_ms": 50}},
            ]
        }
    )
    health = ModelHealth()
    waiting: Counter[str] = Counter()
    planner = Planner(
        registry,
        {"vision.classify": ImageClassificationPipeline()},
        health,
        ModelManager(registry),
        demand=lambda key: waiting[key],
    )
    planner._preload = lambda spec: None  # type: ignore[method-assign]  # choosing, not loading
    return planner, health, waiting


def _choose(planner: Planner) -> str:
    """The chosen model's key (``id@version``), as demand is counted."""
    request = make_request(
        "vision", "classify", solid((1, 2, 3)), params={"strategy": "performance", "models": ["slow", "fast"]}
    )
    return planner.plan("vision", request).specs[0].key


def test_an_untimed_idle_model_gets_a_probe_before_a_timed_one(tmp_path: Path) -> None:
    planner, health, _ = _planner(tmp_path)
    registry = planner.registry
    health.observe_latency(registry.get("slow"), 0.5)  # timed, and better than fast's declaration
    assert _choose(planner) == "fast@1"  # untimed and idle: probed
    health.observe_latency(registry.get("fast"), 2.0)
    assert _choose(planner) == "slow@1"  # measured slower: judged by the measurement


def test_an_untimed_model_with_a_probe_waiting_is_judged_by_its_declaration(tmp_path: Path) -> None:
    planner, health, waiting = _planner(tmp_path)
    health.observe_latency(planner.registry.get("slow"), 0.5)
    waiting["fast@1"] = 1  # its probe has not come back yet
    assert _choose(planner) == "slow@1"  # 0.5 against the declared 1.0 x 2


def test_a_backlog_spreads_over_models_in_proportion_to_their_speed(tmp_path: Path) -> None:
    planner, health, waiting = _planner(tmp_path)
    health.observe_latency(planner.registry.get("slow"), 1.0)
    health.observe_latency(planner.registry.get("fast"), 0.1)
    for _ in range(110):
        waiting[_choose(planner)] += 1
    # Each goes where it would be answered first: about ten to fast for each one to slow.
    assert waiting["fast@1"] == 100 and waiting["slow@1"] == 10, waiting


def test_generations_stopped_for_their_own_budget_do_not_open_the_circuit(tmp_path: Path) -> None:
    # A tenant's deadlines too short to finish (or its own cancels) say nothing about the model:
    # five in a row used to open its circuit for every tenant.
    planner, health, _ = _planner(tmp_path)
    spec = planner.registry.get("fast")
    stopped = GenerationCancelled("stopped after 3 tokens, past the request's time budget")
    for _ in range(20):
        health.observe(spec, [stopped], 5.0)
    assert not health.is_open(spec)
    for _ in range(5):  # model-side failures still do
        health.observe(spec, [ModelError("the model crashed")], 5.0)
    assert health.is_open(spec)
