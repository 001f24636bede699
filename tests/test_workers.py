"""Model lanes: batches form while the model is busy, and one bad item fails alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from altlas.models.manager import ModelManager
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.orchestration.execution.lanes import ModelWorkers
from altlas.orchestration.observability.tracing import Tracing
from altlas.pipelines.base import Output, Prepared
from altlas.pipelines.image_classification import ImageClassificationPipeline
from altlas.schemas.types import Classification
from tests.builders import mean_color_registry
from tests.images import solid


class PoisonAware(ImageClassificationPipeline):
    """The real pipeline and model, except that a batch containing a 'poison' item raises as a whole.

    That is how many runtimes fail (one bad tensor aborts the call), and what
    the lane must contain.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        self.calls.append(len(items))
        if any(item.params.get("poison") for item in items):
            raise RuntimeError("kernel failed on a poisoned input")
        return super().run(runtime, items)


def _lane_parts(models_dir: Path, max_batch: int) -> tuple[ModelSpec, PoisonAware, ModelWorkers]:
    """The mean-colour model, the poison-aware pipeline and workers with one runner per lane."""
    registry = mean_color_registry(models_dir)
    workers = ModelWorkers(ModelManager(registry), Tracing(None), max_batch=max_batch, concurrency=1)
    return registry.get("c"), PoisonAware(), workers


async def test_a_raising_batch_is_retried_item_by_item_so_only_the_bad_item_fails(models_dir: Path) -> None:
    spec, pipeline, workers = _lane_parts(models_dir, max_batch=16)
    try:
        items = [pipeline.prepare(solid((i * 20, 0, 0)), {"poison": i == 3}, spec) for i in range(8)]
        # Two tickets (two micro-batches' worth), both queued before the lane runs.
        first, second = (workers.submit(spec, pipeline, part, [None] * 4) for part in (items[:4], items[4:]))
        results = [*await first, *await second]
    finally:
        await workers.close()
    assert [type(r.output).__name__ for r in results] == ["Classification"] * 3 + ["RuntimeError"] + [
        "Classification"
    ] * 4
    assert all(isinstance(r.output, Classification) for i, r in enumerate(results) if i != 3)
    # The 8 requests were queued before the lane ran: one batch of 8, then 8 single retries.
    assert pipeline.calls[0] == 8 and pipeline.calls[1:] == [1] * 8
    assert {r.batch_size for r in results} == {8}


async def test_tickets_split_at_the_max_batch_and_a_cancelled_one_is_skipped(models_dir: Path) -> None:
    spec, pipeline, workers = _lane_parts(models_dir, max_batch=4)
    try:
        items = [pipeline.prepare(solid((0, i * 20, 0)), {}, spec) for i in range(6)]
        kept = workers.submit(spec, pipeline, items, [None] * 6)
        dropped = workers.submit(spec, pipeline, items[:3], [None] * 3)
        dropped.cancel()  # a request that timed out while queued
        results = await kept
    finally:
        await workers.close()
    assert [r.batch_size for r in results] == [4] * 4 + [2] * 2
    assert all(isinstance(r.output, Classification) for r in results)
    assert pipeline.calls == [4, 2]  # the cancelled ticket never reached the model
