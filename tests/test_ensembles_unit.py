"""Fallback chains and ensembles (several models for one request), specified with in-process fakes.

No broker and no model files: the model lanes are a fake that answers each model with a set
output or failure (or never, to miss a deadline), so each test says one behaviour of
execution/multi_model.py or of the combining rules in execution/ensembles.py.
test_e2e_orchestration.py keeps the same claims over a real broker and real models.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.execution.ensembles import aggregate, fuse_boxes
from altlas.orchestration.execution.in_flight import InFlight, RequestCancelled
from altlas.orchestration.execution.lanes import JobResult
from altlas.orchestration.execution.multi_model import DeadlineExceeded, Execution, MultiModelExecutor
from altlas.orchestration.execution.preparation_pool import prepare_each
from altlas.orchestration.routing.health import ModelHealth
from altlas.orchestration.routing.planning import Plan
from altlas.pipelines.base import Prepared
from altlas.schemas.errors import AltlasError, ErrorCode, InvalidRequestError
from altlas.schemas.types import (
    Box,
    Classification,
    Detection,
    Embedding,
    Label,
    ParamValue,
    Record,
    TextGeneration,
)

REGISTRY = ModelRegistry.from_dict(
    {
        "models": [
            *({"id": id_, "task": "vision.classify", "backend": "onnx", "path": "x"} for id_ in "abc"),
            {
                "id": "slow",
                "task": "vision.classify",
                "backend": "onnx",
                "path": "x",
                "metadata": {"timeout_s": 0.05},
            },
        ]
    }
)
INDEX = {"cat": 0, "dog": 1}
UNREADABLE = b"not an image"
BROKEN = b"an image a decoder trips over"


def scores(**by_label: float) -> Classification:
    """A classifier's answer, best label first."""
    ranked = sorted(by_label.items(), key=lambda kv: -kv[1])
    return Classification(labels=[Label(index=INDEX[name], label=name, score=s) for name, s in ranked])


class FakePipeline:
    """Prepares a payload as itself, except one that no model could read."""

    task = "vision.classify"

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        if payload == UNREADABLE:
            raise InvalidRequestError("not an image", code=ErrorCode.INVALID_PAYLOAD)
        if payload == BROKEN:  # a decoder library's own exception, not one of ours
            raise struct.error("unpack requires a buffer of 4 bytes")
        return Prepared(payload, params)


class FakeDecoder:
    """Prepares on the event loop: decoding is not what these tests are about."""

    async def prepare(self, todo: tuple[Any, bytes | str, Mapping[str, ParamValue], ModelSpec]) -> Prepared:
        pipeline, payload, params, spec = todo
        prepared: Prepared = pipeline.prepare(payload, params, spec)
        return prepared

    async def prepare_together(self, todo: Sequence[Any]) -> list[Prepared | BaseException]:
        return prepare_each(todo, together=True)


class FakeLanes:
    """Stands in for the model lanes: each model id answers with its set output or failure, or never."""

    def __init__(self, answers: Mapping[str, Record | Exception | None], health: ModelHealth | None = None):
        self.answers = answers
        self.health = health
        self.asked: list[str] = []  # model keys, in the order they were asked
        self.timed_out: list[str] = []
        self.in_flight = InFlight()
        self.cancel_on: str | None = None  # a model whose attempt a model command cancels

    def submit(
        self,
        spec: ModelSpec,
        pipeline: Any,
        items: Sequence[Prepared],
        spans: Any,
        *,
        request_ids: Any = None,
    ) -> asyncio.Future[list[JobResult]]:
        self.asked.append(spec.key)
        future: asyncio.Future[list[JobResult]] = asyncio.get_running_loop().create_future()
        if spec.id == self.cancel_on:
            held = self.in_flight.hold(spec, request_ids[0], None)
            self.in_flight.cancel(spec.id, request_ids[0], "cancelled by model command c1")
            held.release()
            future.set_result(
                [JobResult(RequestCancelled("cancelled by model command c1"), time.time(), 1.0, 1)]
            )
            return future
        output = self.answers[spec.id]
        if output is not None:
            future.set_result([JobResult(output, time.time(), 1.0, len(items))])
        return future

    def health_failure(self, spec: ModelSpec, error: BaseException) -> None:
        self.timed_out.append(spec.key)


async def execute(
    lanes: FakeLanes,
    strategy: str,
    models: Sequence[str],
    *,
    payload: bytes = b"an image",
    params: Mapping[str, ParamValue] | None = None,
) -> Execution:
    """One request through a ``strategy`` plan over ``models``, with a 5 s attempt timeout."""
    plan = Plan("vision.classify", FakePipeline(), strategy, [REGISTRY.get(m) for m in models])  # type: ignore[arg-type]
    executor = MultiModelExecutor(lanes, FakeDecoder(), 5.0)  # type: ignore[arg-type]
    return await executor.run(make_request("vision", "classify", payload, params=params), plan, None)


def labels_of(output: Record | BaseException) -> list[tuple[str, float]]:
    assert isinstance(output, Classification), output
    return [(lab.label, round(lab.score, 6)) for lab in output.labels]


# ---------------------------------------------------------------- fallback


async def test_a_fallback_answers_with_the_next_model_when_one_fails() -> None:
    lanes = FakeLanes({"a": RuntimeError("kernel crashed"), "b": scores(cat=0.9)})
    done = await execute(lanes, "fallback", ["a", "b"])
    assert labels_of(done.output) == [("cat", 0.9)]
    assert done.answered_by is not None and done.answered_by.key == "b@1"
    assert done.attributes == {"fallback_tried": "a@1,b@1", "fallback_failed": "a@1: MODEL_FAILED"}


async def test_a_fallback_stops_at_the_first_model_that_answers() -> None:
    lanes = FakeLanes({"a": scores(cat=0.9), "b": scores(dog=0.9)})
    done = await execute(lanes, "fallback", ["a", "b"])
    assert labels_of(done.output) == [("cat", 0.9)]
    assert lanes.asked == ["a@1"] and done.attributes == {"fallback_tried": "a@1"}


async def test_a_fallback_does_not_retry_bad_input_on_the_next_model() -> None:
    lanes = FakeLanes({"a": scores(cat=0.9), "b": scores(cat=0.9)})
    done = await execute(lanes, "fallback", ["a", "b"], payload=UNREADABLE)
    assert isinstance(done.output, AltlasError) and done.output.code is ErrorCode.INVALID_PAYLOAD
    assert lanes.asked == [] and done.attributes["fallback_tried"] == "a@1"


async def test_a_fallback_does_not_retry_a_payload_its_decoder_raised_on() -> None:
    # An unknown exception from preparation is the payload's fault too, as on the single-model path:
    # read as MODEL_FAILED it sent the chain on to decode the same payload with every model.
    lanes = FakeLanes({"a": scores(cat=0.9), "b": scores(cat=0.9)})
    done = await execute(lanes, "fallback", ["a", "b"], payload=BROKEN)
    assert isinstance(done.output, AltlasError) and done.output.code is ErrorCode.INVALID_PAYLOAD
    assert lanes.asked == [] and done.attributes["fallback_tried"] == "a@1"


async def test_a_fallback_skips_a_model_whose_circuit_is_open_without_asking_it() -> None:
    health = ModelHealth(failures_to_open=1)
    health.failure(REGISTRY.get("a"), "MODEL_FAILED")
    lanes = FakeLanes({"a": scores(cat=0.9), "b": scores(dog=0.8)}, health)
    done = await execute(lanes, "fallback", ["a", "b"])
    assert labels_of(done.output) == [("dog", 0.8)]
    assert lanes.asked == ["b@1"] and done.attributes["fallback_failed"] == "a@1: MODEL_UNAVAILABLE"


async def test_a_model_that_times_out_leaves_the_rest_of_the_time_to_the_next_one() -> None:
    lanes = FakeLanes({"slow": None, "a": scores(cat=0.7)})  # slow never answers within its 0.05 s
    done = await execute(lanes, "fallback", ["slow", "a"])
    assert labels_of(done.output) == [("cat", 0.7)]
    assert done.attributes == {"fallback_tried": "slow@1,a@1", "fallback_failed": "slow@1: DEADLINE_EXCEEDED"}


async def test_a_request_a_model_command_cancelled_is_not_handed_to_the_next_model() -> None:
    lanes = FakeLanes({"a": scores(cat=0.9), "b": scores(cat=0.7)})
    lanes.cancel_on = "a"
    done = await execute(lanes, "fallback", ["a", "b"])
    assert isinstance(done.output, AltlasError) and done.output.code is ErrorCode.DEADLINE_EXCEEDED
    assert lanes.asked == ["a@1"]


async def test_the_requests_own_time_limit_bounds_the_whole_fallback_chain() -> None:
    lanes = FakeLanes({"slow": None, "a": scores(cat=0.7)})
    done = await execute(lanes, "fallback", ["slow", "a"], params={"timeout_ms": 40})
    assert isinstance(done.output, BaseException)
    assert done.attributes["fallback_tried"] == "slow@1"


async def test_a_fallback_whose_every_model_fails_gives_one_error_naming_each() -> None:
    unavailable = AltlasError("b is out", code=ErrorCode.MODEL_UNAVAILABLE)
    lanes = FakeLanes({"a": RuntimeError("kernel crashed"), "b": unavailable})
    done = await execute(lanes, "fallback", ["a", "b"])
    assert isinstance(done.output, AltlasError) and done.output.code is ErrorCode.MODEL_UNAVAILABLE
    assert done.output.message == (
        "every model of the fallback chain failed: a@1 (MODEL_FAILED) -> b@1 (MODEL_UNAVAILABLE)"
    )
    assert done.answered_by is None and [m.spec.key for m in done.members] == ["a@1", "b@1"]


# ---------------------------------------------------------------- ensembles


async def test_an_ensemble_averages_label_scores_by_default() -> None:
    lanes = FakeLanes(
        {"a": scores(cat=0.9, dog=0.1), "b": scores(dog=0.7, cat=0.3), "c": scores(cat=0.6, dog=0.4)}
    )
    done = await execute(lanes, "ensemble", ["a", "b", "c"])
    assert labels_of(done.output) == [("cat", 0.6), ("dog", 0.4)]
    assert sorted(lanes.asked) == ["a@1", "b@1", "c@1"] and not done.partial
    assert done.attributes == {"ensemble_size": "3", "ensemble_answered": "3"}


async def test_a_majority_ensemble_follows_the_most_members_over_the_highest_mean() -> None:
    answers = {
        "a": scores(cat=0.51, dog=0.49),
        "b": scores(cat=0.51, dog=0.49),
        "c": scores(dog=0.99, cat=0.01),
    }
    assert labels_of(aggregate(list(answers.values()), {}))[0][0] == "dog"  # what the mean would say
    done = await execute(FakeLanes(answers), "ensemble", ["a", "b", "c"], params={"aggregate": "majority"})
    assert [name for name, _ in labels_of(done.output)] == ["cat", "dog"]


async def test_an_ensemble_leaves_a_failed_member_out_and_lists_it() -> None:
    lanes = FakeLanes({"a": RuntimeError("kernel crashed"), "b": scores(cat=0.8), "c": scores(cat=0.6)})
    done = await execute(lanes, "ensemble", ["a", "b", "c"])
    assert labels_of(done.output) == [("cat", 0.7)]
    assert done.answered_by is not None and done.answered_by.key == "b@1" and not done.partial
    assert done.attributes["ensemble_answered"] == "2"
    assert [type(m.output).__name__ for m in done.members] == [
        "RuntimeError",
        "Classification",
        "Classification",
    ]


async def test_an_ensemble_answers_without_a_member_past_its_deadline_flagged_partial() -> None:
    lanes = FakeLanes({"a": scores(cat=0.8), "slow": None})  # slow never answers within its 0.05 s
    done = await execute(lanes, "ensemble", ["a", "slow"])
    assert labels_of(done.output) == [("cat", 0.8)] and done.partial
    assert isinstance(done.members[1].output, DeadlineExceeded)
    assert lanes.timed_out == ["slow@1"]  # counted against its health: the lanes never saw it fail


async def test_an_ensemble_whose_every_member_fails_gives_one_error() -> None:
    crashed = RuntimeError("a crashed")
    lanes = FakeLanes({"a": crashed, "b": AltlasError("b is out", code=ErrorCode.MODEL_UNAVAILABLE)})
    done = await execute(lanes, "ensemble", ["a", "b"])
    assert done.output is crashed and done.answered_by is None
    assert done.attributes == {"ensemble_size": "2", "ensemble_answered": "0"}


async def test_an_unknown_combining_rule_is_an_invalid_params_answer() -> None:
    lanes = FakeLanes({"a": scores(cat=0.9), "b": scores(cat=0.7)})
    done = await execute(lanes, "ensemble", ["a", "b"], params={"aggregate": "median"})
    assert isinstance(done.output, InvalidRequestError) and done.output.code is ErrorCode.INVALID_PARAMS


# ---------------------------------------------------------------- combining rules


def _text(text: str) -> TextGeneration:
    return TextGeneration(
        text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1, tokens_per_second=1.0
    )


def test_generated_texts_vote_with_case_and_punctuation_folded() -> None:
    out = aggregate([_text("Lyon"), _text("Paris."), _text("paris")], {})
    assert isinstance(out, TextGeneration) and out.text == "Paris."


def _box(x: float, score: float) -> Box:
    return Box(x1=x, y1=x, x2=x + 10, y2=x + 10, class_id=0, class_name="car", score=score)


@pytest.mark.parametrize(("min_votes", "expected"), [(1, [(0.0, 0.8), (50.0, 0.3)]), (2, [(0.0, 0.8)])])
def test_overlapping_boxes_fuse_and_one_seen_by_a_single_member_is_down_weighted(
    min_votes: int, expected: list[tuple[float, float]]
) -> None:
    members = [
        Detection(boxes=[_box(0, 0.9), _box(50, 0.6)], image_width=100, image_height=100),
        Detection(boxes=[_box(0, 0.7)], image_width=100, image_height=100),
    ]
    fused = fuse_boxes(members, {"min_votes": min_votes})
    assert [(b.x1, round(b.score, 6)) for b in fused.boxes] == expected


def test_embeddings_are_averaged_and_renormalised() -> None:
    out = aggregate([Embedding(vector=[1.0, 0.0], dim=2), Embedding(vector=[0.0, 1.0], dim=2)], {})
    assert isinstance(out, Embedding) and out.vector == pytest.approx([2**-0.5, 2**-0.5])
