"""Model commands reaching requests in the lanes: found by id in a fixed-batch lane, held one by one
in a continuous one.

A fixed-batch lane registers nothing per request; a cancel looks through its queue (answering what
it finds there) and its running batch (reached, but it finishes). A continuously batching lane still
holds each request in ``InFlight``, since it can be stopped after it is handed over. In-process
fakes: a runtime that loads at once and pipelines that wait on a gate, so a batch is held running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest

from altlas.models.manager import ModelManager
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.orchestration.execution.in_flight import RequestCancelled
from altlas.orchestration.execution.lanes import JobResult, ModelWorkers
from altlas.orchestration.observability.tracing import Tracing
from altlas.pipelines.base import Output, Prepared

REGISTRY = ModelRegistry.from_dict(
    {
        "models": [
            {"id": "fixed", "task": "vision.classify", "backend": "onnx", "path": "absent.onnx"},
            {"id": "llm", "task": "text.generate", "backend": "llama.cpp", "path": "absent.gguf"},
        ]
    }
)
REASON = "cancelled by model command c1"


class FakeRuntime:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def memory_bytes(self) -> int:
        return 1


class GatedPipeline:
    """A fixed-batch pipeline: each batch waits for the gate, then answers each item with its data."""

    task = "vision.classify"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.seen: list[Any] = []  # items that reached the model, in order

    def run(self, runtime: Any, items: Sequence[Prepared]) -> list[Output]:
        self.seen.extend(item.data for item in items)
        self.started.set()
        if not self.gate.wait(5):
            raise TimeoutError("the test never opened the gate")
        return [f"done {item.data}" for item in items]  # type: ignore[misc]


class Generation(Future[tuple[Output, dict[str, str] | None]]):
    """A pending generation as a continuous runtime hands it back: ``stop`` ends it with its text."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped: list[str] = []

    def stop(self, reason: str) -> None:
        self.stopped.append(reason)
        self.set_result((RequestCancelled(f"{reason}, after 'partial'"), None))


class ContinuousPipeline:
    """Has ``submit``, so its lane batches continuously: every request is handed over at once."""

    task = "text.generate"

    def __init__(self) -> None:
        self.generations: list[Generation] = []
        self.submitted = threading.Event()

    def run(self, runtime: Any, items: Sequence[Prepared]) -> list[Output]:
        raise AssertionError("a continuous lane hands requests over one by one")

    def submit(self, runtime: Any, item: Prepared, sink: Any) -> Generation:
        self.generations.append(Generation())
        self.submitted.set()
        return self.generations[-1]


@dataclass
class Lanes:
    workers: ModelWorkers
    fixed: GatedPipeline

    def submit(self, request_id: str) -> asyncio.Future[list[JobResult]]:
        """One request of id ``request_id`` (its item's data) on the fixed-batch lane."""
        return self.workers.submit(
            REGISTRY.get("fixed"),
            self.fixed,
            [Prepared(request_id, {})],
            [None],
            request_ids=[request_id],  # type: ignore[arg-type]
        )


@pytest.fixture
async def lanes() -> AsyncIterator[Lanes]:
    """Workers with one runner per lane, so a second request waits behind a running batch."""
    workers = ModelWorkers(
        ModelManager(REGISTRY, runtime_factory=FakeRuntime), Tracing(None), max_batch=8, concurrency=1
    )
    parts = Lanes(workers, GatedPipeline())
    yield parts
    parts.fixed.gate.set()
    await workers.close()


async def _running(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 5), "the lane never ran the request"


async def test_a_fixed_batch_request_registers_nothing_per_request(lanes: Lanes) -> None:
    futures = [lanes.submit(f"r{i}") for i in range(3)]
    assert len(lanes.workers.in_flight) == 0  # queued: nothing held
    await _running(lanes.fixed.started)
    assert len(lanes.workers.in_flight) == 0  # running: nothing held either
    lanes.fixed.gate.set()
    results = [r for f in futures for r in await f]
    assert [r.output for r in results] == ["done r0", "done r1", "done r2"]
    assert len(lanes.workers.in_flight) == 0


async def test_a_queued_fixed_batch_request_is_found_by_its_id_and_answered_as_cancelled(
    lanes: Lanes,
) -> None:
    first = lanes.submit("r0")
    await _running(lanes.fixed.started)  # r0's batch holds the only runner
    queued, other = lanes.submit("r1"), lanes.submit("r2")
    in_flight = lanes.workers.in_flight
    assert in_flight.cancel("fixed", "r1", REASON, version="no-such-version") == 0
    assert in_flight.cancel("llm", "r1", REASON) == 0  # the id on another model is not named
    assert in_flight.cancel("fixed", "r1", REASON) == 1
    assert in_flight.ended("r1") and not in_flight.ended("r2")
    (result,) = await asyncio.wait_for(queued, 5)  # answered at once, the gate still closed
    assert isinstance(result.output, RequestCancelled)
    assert str(result.output) == f"{REASON}, before it ran"
    assert result.attributes == {"completion_tokens": "0"} and result.batch_size == 0
    assert in_flight.cancel("fixed", "r1", "again") == 0  # answered: nothing left to reach
    lanes.fixed.gate.set()
    assert [r.output for r in [*await first, *await other]] == ["done r0", "done r2"]
    assert lanes.fixed.seen == ["r0", "r2"]  # the cancelled request never reached the model


async def test_a_request_in_a_running_fixed_batch_is_reached_but_finishes(lanes: Lanes) -> None:
    running = lanes.submit("r0")
    await _running(lanes.fixed.started)
    in_flight = lanes.workers.in_flight
    assert in_flight.cancel("fixed", "r0", REASON) == 1
    assert in_flight.ended("r0")  # a fallback chain hands it to no other model
    assert not running.done()
    lanes.fixed.gate.set()
    (result,) = await running
    assert result.output == "done r0" and result.batch_size == 1
    assert in_flight.cancel("fixed", "r0", "again") == 0  # answered: no longer in a running batch


async def test_a_continuous_lane_still_holds_each_request_and_a_cancel_stops_it(lanes: Lanes) -> None:
    pipeline = ContinuousPipeline()
    spec = REGISTRY.get("llm")
    future = lanes.workers.submit(spec, pipeline, [Prepared("p", {})], [None], request_ids=["g1"])  # type: ignore[arg-type]
    in_flight = lanes.workers.in_flight
    assert len(in_flight) == 1
    await _running(pipeline.submitted)  # handed over: stopped now, or as soon as the lane has its stop
    assert in_flight.cancel("llm", "g1", REASON) == 1
    (result,) = await asyncio.wait_for(future, 5)
    assert pipeline.generations[0].stopped == [REASON]
    assert isinstance(result.output, RequestCancelled) and "partial" in str(result.output)
    await asyncio.sleep(0)  # the ticket's done callback releases what it held
    assert len(in_flight) == 0 and in_flight.ended("g1")
