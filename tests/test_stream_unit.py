"""The stream worker's at-least-once delivery, specified with in-process fakes (no broker, no models).

Fast and deterministic: each test says one behaviour. The real-broker tests (test_e2e_*) keep
their claims beside these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from altlas.consumers.records import InboundRecord
from altlas.orchestration.app.settings import TopicSettings
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.serving.answers import Answers
from altlas.orchestration.serving.loop import StreamWorker
from altlas.orchestration.serving.outcomes import Outcome
from altlas.producers.publisher import OutboundMessage, PermanentSendError, ProducerConfig
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import ErrorCode
from altlas.schemas.types import Classification, DeadLetter, Label, ResultStatus, VisionResult

TOPICS = TopicSettings()
CODEC = AvroCodec()


class FakeConsumer:
    """Hands out the batches it was given, then nothing; records what finished, in order."""

    group_id = "g.vision"

    def __init__(self, batches: list[list[InboundRecord]]) -> None:
        self.batches = batches
        self.finished_offsets: list[int] = []

    async def next_batch(self) -> list[InboundRecord]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(0.01)
        return []

    async def finished(self, records: Sequence[InboundRecord]) -> None:
        self.finished_offsets += [r.offset for r in records]


class FakeProcessor:
    """Answers each record with a classification, on the reply topic its request asked for."""

    def __init__(self) -> None:
        self.answers = Answers(
            "vision", codec=CODEC, topics=TOPICS, tracing=Tracing(None), instance_id="i", group_id="g",
            max_message_bytes=2**20,
        )  # fmt: skip
        self.ctx = type("Ctx", (), {"topics": TOPICS})()
        self.requests: dict[int, Any] = {}

    async def process(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        out = Classification(labels=[Label(index=0, label="x", score=1.0)])
        return [self.answers.result(r, self.requests[r.offset], None, out, None, None) for r in records]

    def dead_letter(self, *args: Any, **kwargs: Any) -> OutboundMessage:
        return self.answers.dead_letter(*args, **kwargs)


class FakePublisher:
    """Acknowledges when told to; refuses every message to the topics in ``refuse``."""

    def __init__(self, refuse: dict[str, ErrorCode] | None = None, *, broken: bool = False) -> None:
        self.config = ProducerConfig(send_timeout_s=1.0)
        self.refuse = refuse or {}
        self.broken = broken
        self.sent: list[OutboundMessage] = []
        self.pending: list[asyncio.Future[Any]] = []

    async def enqueue(self, msg: OutboundMessage) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if msg.topic in self.refuse:
            future.set_exception(PermanentSendError("refused", code=self.refuse[msg.topic]))
        else:
            self.sent.append(msg)
            self.pending.append(future)
        return future

    async def deliver(self, msg: OutboundMessage, first_try: asyncio.Future[Any] | None = None) -> Any:
        if self.broken:
            raise RuntimeError("a bug on the way out")
        if msg.topic in self.refuse:
            raise PermanentSendError("refused", code=self.refuse[msg.topic])
        self.sent.append(msg)
        return None

    def ack_all(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_result(None)


def _batch(processor: FakeProcessor, offsets: range, reply: str | None = None) -> list[InboundRecord]:
    records = []
    for offset in offsets:
        request = make_request("vision", "classify", b"p", request_id=f"r{offset}", reply_topic=reply)
        processor.requests[offset] = request
        records.append(
            InboundRecord(TOPICS.vision_requests, 0, offset, b"k", CODEC.encode_record(request), (), 1)
        )
    return records


async def _run_until(worker: StreamWorker, done: Any, timeout_s: float = 5.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(int(timeout_s / 0.01)):
            if done() or task.done():
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_offsets_finish_only_after_their_answers_are_acknowledged_in_batch_order() -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer([_batch(processor, range(0, 3)), _batch(processor, range(3, 5))])
    publisher = FakePublisher()
    worker = StreamWorker(consumer, processor, publisher)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    for _ in range(100):
        if len(publisher.sent) == 5:
            break
        await asyncio.sleep(0.01)
    assert [CODEC.decode_record(m.value, VisionResult).request_id for m in publisher.sent] == [
        f"r{i}" for i in range(5)
    ]
    assert consumer.finished_offsets == []  # nothing acknowledged yet: nothing may commit
    publisher.ack_all()
    for _ in range(100):
        if len(consumer.finished_offsets) == 5:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert consumer.finished_offsets == [0, 1, 2, 3, 4]
    assert worker.progress.stalled_s() == 0.0


async def test_a_refused_reply_topic_is_answered_on_the_results_topic_and_the_batch_finishes() -> None:
    processor = FakeProcessor()
    refused = "ai.results.forbidden"
    consumer = FakeConsumer([_batch(processor, range(0, 2), reply=refused)])
    publisher = FakePublisher({refused: ErrorCode.REPLY_TOPIC_REFUSED})
    worker = StreamWorker(consumer, processor, publisher)  # type: ignore[arg-type]
    await _run_until(worker, lambda: len(consumer.finished_offsets) == 2)
    assert consumer.finished_offsets == [0, 1]
    by_topic: dict[str, list[OutboundMessage]] = {}
    for msg in publisher.sent:
        by_topic.setdefault(msg.topic, []).append(msg)
    assert refused not in by_topic
    results = [CODEC.decode_record(m.value, VisionResult) for m in by_topic[TOPICS.vision_results]]
    assert {r.request_id for r in results} == {"r0", "r1"}
    assert all(
        r.status is ResultStatus.ERROR and r.error and r.error.code == "REPLY_TOPIC_REFUSED" for r in results
    )
    letters = [CODEC.decode_record(m.value, DeadLetter) for m in by_topic[TOPICS.dead_letter]]
    assert sorted(letter.offset for letter in letters) == [0, 1]


async def test_a_batch_that_fails_while_publishing_stops_the_worker_rather_than_hold_its_partition() -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer([_batch(processor, range(0, 2), reply="ai.results.other")])
    publisher = FakePublisher({"ai.results.other": ErrorCode.PUBLISH_REFUSED}, broken=True)
    worker = StreamWorker(consumer, processor, publisher)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="a bug on the way out"):
        await _run_until(worker, lambda: False, timeout_s=2.0)
    assert consumer.finished_offsets == []  # never committed past an answer that was not published
