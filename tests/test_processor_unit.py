"""The request processor's steps (intake, admit, execute, answer), specified with in-process fakes.

No broker and no model files: the model lanes are a fake that answers every ticket at once and
counts what it was given, so each test says one behaviour of the processor. The real-broker
tests (test_e2e_*) keep their claims beside these.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from altlas.consumers.records import InboundRecord
from altlas.models.manager import ModelManager
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.orchestration.app.settings import TopicSettings
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.execution.cache import ResultCache, cache_key
from altlas.orchestration.execution.lanes import JobResult
from altlas.orchestration.execution.multi_model import MultiModelExecutor
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.routing.health import ModelHealth
from altlas.orchestration.routing.planning import Plan, Planner
from altlas.orchestration.serving.outcomes import Outcome
from altlas.orchestration.serving.processor import ProcessorContext, RequestProcessor
from altlas.pipelines.base import Prepared
from altlas.schemas.codec import AvroCodec
from altlas.schemas.types import (
    AnyRequest,
    Classification,
    Label,
    ParamValue,
    Record,
    ResultStatus,
    VisionResult,
)

TOPICS = TopicSettings()
CODEC = AvroCodec()
REGISTRY = ModelRegistry.from_dict(
    {"models": [{"id": "m", "task": "vision.classify", "backend": "onnx", "path": "absent.onnx"}]}
)
COMPUTED = Classification(labels=[Label(index=0, label="computed", score=1.0)])


class FakePipeline:
    """Prepares a payload as itself; the fake lanes never call it to run."""

    task = "vision.classify"

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        return Prepared(payload, params)


class FakeLanes:
    """Stands in for the model lanes: answers each ticket at once and records its size."""

    def __init__(self) -> None:
        self.demand: Counter[str] = Counter()
        self.tickets: list[int] = []  # items per submitted ticket: one model run each

    def submit(
        self,
        spec: ModelSpec,
        pipeline: Any,
        items: Sequence[Prepared],
        spans: Any,
        on_chunk: Any = None,
        *,
        request_ids: Any = None,
    ) -> asyncio.Future[list[JobResult]]:
        self.tickets.append(len(items))
        future: asyncio.Future[list[JobResult]] = asyncio.get_running_loop().create_future()
        future.set_result([JobResult(COMPUTED, time.time(), 1.0, len(items)) for _ in items])
        return future

    def health_failure(self, spec: ModelSpec, error: BaseException) -> None:
        pass


class BoomPlanner(Planner):
    """The real planner, except that planning request ``boom`` hits a bug."""

    def plan(self, modality: str, request: AnyRequest, *, detected: tuple[str, str] | None = None) -> Plan:
        if request.request_id == "boom":
            raise RuntimeError("a bug in planning")
        return super().plan(modality, request, detected=detected)

    def _preload(self, spec: ModelSpec) -> None:  # choosing a model here, never loading it
        pass


class UnreadableCache(ResultCache):
    """A cache whose entries cannot be read back (another version wrote them, or they are corrupt)."""

    async def lookup(self, key: str) -> tuple[str, Record | asyncio.Future[Record] | None]:
        raise ValueError("cache entry does not validate")


@pytest.fixture
async def decoder() -> AsyncIterator[Decoder]:
    decoder = Decoder(threads=1)
    yield decoder
    decoder.shutdown()


def _processor(decoder: Decoder, lanes: FakeLanes, cache: ResultCache | None = None) -> RequestProcessor:
    pipelines: dict[str, Any] = {"vision.classify": FakePipeline()}
    planner = BoomPlanner(REGISTRY, pipelines, ModelHealth(), ModelManager(REGISTRY))
    ctx = ProcessorContext(
        codec=CODEC,
        planner=planner,
        executor=MultiModelExecutor(lanes, decoder, 5.0),  # type: ignore[arg-type]
        workers=lanes,  # type: ignore[arg-type]
        topics=TOPICS,
        decoder=decoder,
        max_message_bytes=2**20,
        tracing=Tracing(None),
        enqueue=_never_enqueue,
        instance_id="i",
        group_prefix="g",
        cache=cache,
    )
    return RequestProcessor("vision", ctx)


async def _never_enqueue(msg: Any) -> asyncio.Future[Any]:
    raise AssertionError("nothing streams in these tests")


def _records(*requests: AnyRequest) -> list[InboundRecord]:
    return [
        InboundRecord(TOPICS.vision_requests, 0, n, b"k", CODEC.encode_record(r), (), 1)
        for n, r in enumerate(requests)
    ]


def _request(request_id: str, payload: bytes = b"pixels", model: str = "m") -> AnyRequest:
    return make_request("vision", "classify", payload, model=model, request_id=request_id)


def _result(outcome: Outcome) -> VisionResult:
    (msg,) = [m for m in outcome.messages if m.topic != TOPICS.dead_letter]
    return CODEC.decode_record(msg.value, VisionResult)


async def test_undecodable_bytes_are_answered_with_a_dead_letter_and_no_model_run(decoder: Decoder) -> None:
    lanes = FakeLanes()
    garbage = InboundRecord(TOPICS.vision_requests, 0, 7, b"k", b"\xffnot avro at all", (), 1)
    (outcome,) = await _processor(decoder, lanes).process([garbage])
    assert outcome.dead_letter and outcome.error is not None and outcome.error.code == "DECODE_ERROR"
    assert [m.topic for m in outcome.messages] == [TOPICS.dead_letter]
    assert lanes.tickets == []


async def test_a_request_for_an_unknown_model_gets_an_unknown_model_error_result(decoder: Decoder) -> None:
    lanes = FakeLanes()
    (outcome,) = await _processor(decoder, lanes).process(_records(_request("r1", model="nope")))
    result = _result(outcome)
    assert result.request_id == "r1" and result.status is ResultStatus.ERROR
    assert result.error is not None and result.error.code == "UNKNOWN_MODEL"
    assert lanes.tickets == []


async def test_a_batch_of_single_model_requests_runs_the_model_once(decoder: Decoder) -> None:
    lanes = FakeLanes()
    requests = [_request(f"r{n}", payload=bytes([n])) for n in range(5)]
    outcomes = await _processor(decoder, lanes).process(_records(*requests))
    assert lanes.tickets == [5]
    assert [_result(o).request_id for o in outcomes] == [f"r{n}" for n in range(5)]
    assert all(_result(o).output == COMPUTED for o in outcomes)
    assert sum(lanes.demand.values()) == 0  # every routed request counted out again


async def test_a_cache_hit_is_answered_without_running_the_model(decoder: Decoder) -> None:
    lanes, cache = FakeLanes(), ResultCache()
    stored = Classification(labels=[Label(index=1, label="stored", score=0.5)])
    await cache.complete(cache_key(b"pixels", "vision.classify", REGISTRY.get("m"), {}), stored)
    (outcome,) = await _processor(decoder, lanes, cache).process(_records(_request("r1")))
    result = _result(outcome)
    assert result.output == stored and result.attributes["cache"] == "hit"
    assert lanes.tickets == []


async def test_identical_requests_in_one_batch_run_once_and_share_the_answer(decoder: Decoder) -> None:
    lanes, cache = FakeLanes(), ResultCache()
    outcomes = await _processor(decoder, lanes, cache).process(_records(_request("r1"), _request("r2")))
    assert lanes.tickets == [1]
    first, second = (_result(o) for o in outcomes)
    assert (first.request_id, second.request_id) == ("r1", "r2")
    assert first.output == second.output == COMPUTED
    assert second.attributes["cache"] == "shared" and "cache" not in first.attributes


async def test_a_cache_entry_that_cannot_be_read_is_a_miss_and_the_model_answers(decoder: Decoder) -> None:
    lanes = FakeLanes()
    (outcome,) = await _processor(decoder, lanes, UnreadableCache()).process(_records(_request("r1")))
    result = _result(outcome)
    assert result.status is ResultStatus.OK and result.output == COMPUTED
    assert lanes.tickets == [1]


async def test_an_exception_in_planning_fails_only_that_record(decoder: Decoder) -> None:
    lanes = FakeLanes()
    records = _records(_request("r1", payload=b"a"), _request("boom"), _request("r3", payload=b"c"))
    outcomes = await _processor(decoder, lanes).process(records)
    statuses = [(_result(o).request_id, _result(o).status) for o in outcomes]
    assert statuses == [("r1", ResultStatus.OK), ("boom", ResultStatus.ERROR), ("r3", ResultStatus.OK)]
    error = _result(outcomes[1]).error
    assert error is not None and error.code == "INTERNAL"
    assert outcomes[1].dead_letter and lanes.tickets == [2]
