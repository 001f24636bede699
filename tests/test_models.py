"""Model registry, the ONNX Runtime backend, and the manager's residency rules."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altlas.models.errors import ModelBudgetError, ModelLoadError, UnknownModelError
from altlas.models.manager import ModelEvent, ModelManager
from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelRegistry
from altlas.schemas.errors import ErrorCode
from tests.builders import MEAN_COLOR_B, MEAN_COLOR_W, mean_color_registry


def _registry(models_dir: Path, **extra: dict) -> ModelRegistry:  # type: ignore[type-arg]
    entry = {"task": "vision.classify", "backend": "onnx"}
    return ModelRegistry.from_dict(
        {
            "models": [
                {"id": "dyn", **entry, "path": "mean_color.onnx", **extra.get("dyn", {})},
                {"id": "b1", **entry, "path": "mean_color_b1.onnx", **extra.get("b1", {})},
                {"id": "b4", **entry, "path": "mean_color_b4.onnx", **extra.get("b4", {})},
                {"id": "broken", **entry, "path": "corrupt.onnx"},
            ]
        },
        base_dir=models_dir,
    )


def test_registry_resolves_paths_versions_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_HOME", "/srv/models")
    (tmp_path / "r.yaml").write_text(
        "models:\n"
        "  - {id: m, version: '9', task: vision.classify, backend: onnx, path: a.onnx}\n"
        "  - {id: m, version: '10', task: vision.classify, backend: onnx, path: '${MODEL_HOME}/b.onnx'}\n"
        "  - {id: n, task: text.generate, backend: onnx, path: '${NOPE:-/x}/c.onnx', metadata: {cost: 2.5}}\n"
        "defaults: {vision.classify: m@9}\n"
    )
    reg = ModelRegistry.from_file(tmp_path / "r.yaml")
    assert reg.get("m").version == "10"  # numeric, not lexical, order
    assert reg.get("m").path == Path("/srv/models/b.onnx")
    assert reg.get("m@9").path == tmp_path / "a.onnx"
    assert reg.get("n").path == Path("/x/c.onnx") and reg.get("n").metadata.cost == 2.5
    assert reg.default_for("vision.classify") == reg.get("m@9")
    assert reg.default_for("text.generate") == reg.get("n")
    assert reg.get("m@9").config_hash() != reg.get("m@10").config_hash()
    with pytest.raises(UnknownModelError):
        reg.get("m@11")
    with pytest.raises(UnknownModelError):
        reg.get("../../etc/passwd")


def test_registry_rejects_duplicates_and_bad_defaults() -> None:
    entry = {"id": "a", "task": "vision.classify", "backend": "onnx"}
    with pytest.raises(ValueError, match="twice"):
        ModelRegistry.from_dict({"models": [entry, entry]})
    with pytest.raises(ValueError, match="default"):
        ModelRegistry.from_dict({"models": [entry], "defaults": {"text.generate": "a"}})


def test_model_error_codes_are_wire_codes() -> None:
    from altlas.models import errors

    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.ModelError):
            assert ErrorCode(cls.code)


def _expected(x: np.ndarray) -> np.ndarray:
    logits = x.reshape(x.shape[0], 3, -1).mean(axis=2) @ MEAN_COLOR_W + MEAN_COLOR_B
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("model", ["dyn", "b1", "b4"])
def test_onnx_runtime_batches_any_batch_dimension_with_exact_outputs(models_dir: Path, model: str) -> None:
    runtime = OnnxRuntime(_registry(models_dir).get(model))
    runtime.load()
    x = np.random.default_rng(1).random((7, 3, 4, 4), dtype=np.float32)
    outputs = runtime.predict_batch([{"image": x[i]} for i in range(7)])
    got = np.stack([o["probs"] for o in outputs])
    np.testing.assert_allclose(got, _expected(x), rtol=1e-5, atol=1e-6)
    singles = np.stack([runtime.predict_batch([{"image": x[i]}])[0]["probs"] for i in range(7)])
    np.testing.assert_allclose(got, singles, rtol=1e-6, atol=1e-7)
    assert runtime.providers == ["CPUExecutionProvider"]
    assert runtime.metadata["labels"].splitlines() == ["red", "green", "grey", "blue"]


def test_onnx_runtime_rejects_a_malformed_item_without_failing_the_batch(models_dir: Path) -> None:
    runtime = OnnxRuntime(_registry(models_dir).get("dyn"))
    runtime.load()
    good = np.zeros((3, 4, 4), dtype=np.float32)
    outputs = runtime.predict_batch(
        [
            {"image": good},
            {"image": np.zeros((3, 5, 4))},
            {"wrong": good},
            {"image": np.zeros((4, 4), dtype=np.float32)},  # the wrong rank
            {"image": good.astype(np.float64)},  # converted to the model's dtype
            {"image": good.tolist()},  # so is a nested list
        ]
    )
    assert "probs" in outputs[0]
    assert [type(o).__name__ for o in outputs[1:4]] == ["InvalidInputError"] * 3
    assert "has shape [3, 5, 4]" in str(outputs[1]) and "takes inputs ['image']" in str(outputs[2])
    for converted in outputs[4:]:
        np.testing.assert_array_equal(converted["probs"], outputs[0]["probs"])


def test_onnx_pool_threads_do_not_spin_unless_asked(models_dir: Path) -> None:
    """Spinning idle threads burn the cores that decode the next batch (0.27 -> 0.21 ms of CPU a
    request on the peers bench's tiny model when it was turned off)."""
    spinning = "session.intra_op.allow_spinning"
    for params, expected in (({}, "0"), ({"allow_spinning": True}, "1")):
        registry = mean_color_registry(models_dir, **params)
        runtime = OnnxRuntime(registry.get("c"))
        runtime.load()
        try:
            assert runtime.session is not None
            assert runtime.session.get_session_options().get_session_config_entry(spinning) == expected
        finally:
            runtime.unload()


def test_a_corrupt_model_file_is_a_load_error(models_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxRuntime(_registry(models_dir).get("broken")).load()


class _Recorder:
    def __init__(self) -> None:
        self.events: list[ModelEvent] = []

    def __call__(self, event: ModelEvent) -> None:
        self.events.append(event)

    def states(self, model: str) -> list[str]:
        return [e.state for e in self.events if e.model_id == model]


async def test_manager_loads_once_for_concurrent_users(models_dir: Path) -> None:
    rec = _Recorder()
    manager = ModelManager(_registry(models_dir), listener=rec)
    spec = manager.registry.get("dyn")

    async def use() -> int:
        async with manager.use(spec) as runtime:
            return id(runtime)

    ids = await asyncio.gather(*(use() for _ in range(10)))
    assert len(set(ids)) == 1
    assert rec.states("dyn") == ["loading", "ready"]
    assert manager.is_loaded("dyn")
    await manager.close()
    assert rec.states("dyn")[-1] == "unloaded" and not manager.is_loaded("dyn")


async def test_an_unload_during_a_first_load_with_a_request_waiting_ends_and_the_model_serves_again(
    models_dir: Path,
) -> None:
    # An operator's unload arrives while the model is loading and a second request waits for it. The
    # unload waits for the model to be idle while holding its lock; the waiting request must not count
    # as using it, or the two wait for each other and the model never serves again.
    manager = ModelManager(_registry(models_dir))
    spec = manager.registry.get("dyn")
    loading = asyncio.Event()
    real_load = manager._residency.load

    async def slow_load(entry: Any, *, command_id: str | None) -> Any:
        loading.set()
        await asyncio.sleep(0.2)
        return await real_load(entry, command_id=command_id)

    manager._residency.load = slow_load  # type: ignore[method-assign]

    async def request() -> bool:
        async with manager.use(spec) as runtime:
            await asyncio.sleep(0.05)
            return runtime is not None

    first = asyncio.create_task(request())
    await loading.wait()
    unload = asyncio.create_task(manager.unload("dyn"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(request())
    results = await asyncio.wait_for(asyncio.gather(first, unload, second), 10)
    assert results[0] is True and results[2] is True
    assert await asyncio.wait_for(request(), 10)
    await manager.close()


async def test_manager_evicts_the_least_recently_used_idle_model(models_dir: Path) -> None:
    mb = {"metadata": {"memory_mb": 10}}
    rec = _Recorder()
    manager = ModelManager(
        _registry(models_dir, dyn=mb, b1=mb, b4=mb),
        memory_budget_bytes=25 * 2**20,
        listener=rec,
        eviction="lru",
    )
    reg = manager.registry
    async with manager.use(reg.get("dyn")):
        pass
    async with manager.use(reg.get("b1")):
        pass
    async with manager.use(reg.get("dyn")):  # dyn is now more recent than b1
        pass
    async with manager.use(reg.get("b4")):
        pass
    assert rec.states("b1")[-1] == "evicted"
    assert sorted(manager.loaded()) == ["b4@1", "dyn@1"]
    assert manager.memory_used == 20 * 2**20


async def test_manager_never_evicts_a_model_in_use_and_fails_after_waiting(models_dir: Path) -> None:
    mb = {"metadata": {"memory_mb": 10}}
    manager = ModelManager(
        _registry(models_dir, dyn=mb, b1=mb), memory_budget_bytes=15 * 2**20, wait_for_room_s=0.3
    )
    reg = manager.registry
    async with manager.use(reg.get("dyn")):
        with pytest.raises(ModelBudgetError):
            async with manager.use(reg.get("b1")):
                pass
        assert manager.is_loaded("dyn")
    # Once released, the other model gets its room.
    async with manager.use(reg.get("b1")):
        assert manager.loaded() == ["b1@1"]


async def test_manager_pins_models_the_caller_says_are_needed(models_dir: Path) -> None:
    mb = {"metadata": {"memory_mb": 10}}
    manager = ModelManager(
        _registry(models_dir, dyn=mb, b1=mb, b4=mb),
        memory_budget_bytes=25 * 2**20,
        pinned=lambda key: key == "dyn@1",
    )
    reg = manager.registry
    for name in ("dyn", "b1", "b4"):
        async with manager.use(reg.get(name)):
            pass
    assert sorted(manager.loaded()) == ["b4@1", "dyn@1"]


async def test_failed_load_is_reported_and_retried_on_next_use(models_dir: Path) -> None:
    rec = _Recorder()
    manager = ModelManager(_registry(models_dir), listener=rec)
    for _ in range(2):
        with pytest.raises(ModelLoadError):
            async with manager.use(manager.registry.get("broken")):
                pass
    assert rec.states("broken") == ["loading", "failed", "loading", "failed"]
    assert "cannot load" in rec.events[-1].message


async def test_cost_aware_eviction_drops_the_cheapest_model_to_reload_first(models_dir: Path) -> None:
    slow = {"metadata": {"memory_mb": 10, "load_ms": 5000}}
    cheap = {"metadata": {"memory_mb": 10, "load_ms": 20}}
    rec = _Recorder()
    manager = ModelManager(
        _registry(models_dir, dyn=slow, b1=cheap, b4=cheap), memory_budget_bytes=25 * 2**20, listener=rec
    )
    reg = manager.registry
    for name in ("dyn", "b1", "b4"):  # dyn is the least recently used, but the dearest to reload
        async with manager.use(reg.get(name)):
            pass
    assert rec.states("b1")[-1] == "evicted" and rec.states("dyn")[-1] == "ready"
    assert manager.reload_cost_ms(reg.get("dyn")) == 5000


def test_pickle_weights_load_only_from_trusted_directories(tmp_path: Path) -> None:
    from altlas.models.registry import check_pickle_paths

    trusted, elsewhere = tmp_path / "models", tmp_path / "downloads"
    trusted.mkdir()
    elsewhere.mkdir()
    doc = {
        "models": [
            {"id": "ok", "task": "vision.detect", "backend": "ultralytics", "path": str(trusted / "y.pt")},
            {"id": "data", "task": "vision.classify", "backend": "onnx", "path": str(elsewhere / "m.onnx")},
        ]
    }
    check_pickle_paths(ModelRegistry.from_dict(doc), [trusted])  # ONNX anywhere is fine
    doc["models"].append(
        {
            "id": "evil",
            "task": "vision.detect",
            "backend": "ultralytics",
            "path": str(trusted / ".." / "downloads" / "x.pt"),
        }
    )
    with pytest.raises(ValueError, match="outside the trusted model directories"):
        check_pickle_paths(ModelRegistry.from_dict(doc), [trusted])
