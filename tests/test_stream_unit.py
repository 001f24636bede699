"""The stream worker and its two deliveries, specified with in-process fakes (no broker, no models).

Fast and deterministic: each test says one behaviour. At-least-once (delivery.py) publishes in
order per key and finishes offsets only once acknowledged; exactly-once (exactly_once.py) commits
windows of batches in transactions and rewinds after an abort. The real-broker tests (test_e2e_*,
test_revocation) keep their claims beside these.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
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
from altlas.producers.transactions import Fenced, TransactionAborted
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import ErrorCode
from altlas.schemas.types import Classification, DeadLetter, Label, ResultStatus, VisionResult

TOPICS = TopicSettings()
CODEC = AvroCodec()


class FakeOwnership:
    """The consumer's assignment epoch; revocations never wait here (no group)."""

    def __init__(self) -> None:
        self.epoch = 0

    def current(self, epoch: int) -> bool:
        return epoch == self.epoch

    @asynccontextmanager
    async def committing(self) -> AsyncIterator[None]:
        yield

    async def confirm(self) -> bool:
        return True


class FakeConsumer:
    """Hands out the batches it was given, then nothing; records what finished, in order.

    A rewind fetches again, before anything not yet fetched, every batch fetched and not finished.
    """

    group_id = "g.vision"

    def __init__(self, batches: list[list[InboundRecord]]) -> None:
        self.batches = batches
        self.finished_offsets: list[int] = []
        self.abandoned_offsets: list[int] = []
        self.ownership = FakeOwnership()
        self.rewinds = 0
        self._fetched: list[list[InboundRecord]] = []

    async def next_batch(self) -> list[InboundRecord]:
        if self.batches:
            self._fetched.append(self.batches[0])
            return self.batches.pop(0)
        await asyncio.sleep(0.01)
        return []

    async def finished(self, records: Sequence[InboundRecord]) -> None:
        self.finished_offsets += [r.offset for r in records]

    async def abandon(self, records: Sequence[InboundRecord]) -> None:
        self.abandoned_offsets += [r.offset for r in records]

    async def rewind(self) -> None:
        self.rewinds += 1
        done = set(self.finished_offsets)
        self.batches[:0] = [b for b in self._fetched if any(r.offset not in done for r in b)]
        self._fetched = []


class FakeProcessor:
    """Answers each record with a classification, on the reply topic its request asked for."""

    def __init__(self, *, label: str = "x", delays: dict[int, float] | None = None) -> None:
        self.answers = Answers(
            "vision", codec=CODEC, topics=TOPICS, tracing=Tracing(None), instance_id="i", group_id="g",
            max_message_bytes=2**20,
        )  # fmt: skip
        self.ctx = type("Ctx", (), {"topics": TOPICS})()
        self.requests: dict[int, Any] = {}
        self.label = label
        self.delays = delays or {}  # first offset of a batch -> seconds its answer takes
        self.answered: list[int] = []

    async def process(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        if records[0].offset in self.delays:
            await asyncio.sleep(self.delays[records[0].offset])
        self.answered += [r.offset for r in records]
        out = Classification(labels=[Label(index=0, label=self.label, score=1.0)])
        return [self.answers.result(r, self.requests[r.offset], None, out, None, None) for r in records]

    def dead_letter(self, *args: Any, **kwargs: Any) -> OutboundMessage:
        return self.answers.dead_letter(*args, **kwargs)


class FakePublisher:
    """Acknowledges when told to; refuses every message to the topics in ``refuse``.

    A first try to a ``flaky`` topic fails with a transient error; retries (``deliver``) succeed.
    """

    def __init__(
        self,
        refuse: dict[str, ErrorCode] | None = None,
        *,
        broken: bool = False,
        flaky: set[str] | None = None,
    ) -> None:
        self.config = ProducerConfig(send_timeout_s=1.0)
        self.refuse = refuse or {}
        self.broken = broken
        self.flaky = flaky or set()
        self.sent: list[OutboundMessage] = []
        self.pending: list[asyncio.Future[Any]] = []

    async def enqueue(self, msg: OutboundMessage) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if msg.topic in self.refuse:
            future.set_exception(PermanentSendError("refused", code=self.refuse[msg.topic]))
        elif msg.topic in self.flaky:
            future.set_exception(TimeoutError("no leader yet"))
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

    def clear(self, msg: OutboundMessage) -> bool:
        return msg.topic not in self.refuse

    async def ready(self, msg: OutboundMessage) -> Any:
        return None  # nothing refused here is learned by waiting

    def ack_all(self) -> None:
        for future in self.pending:
            if not future.done():
                future.set_result(None)


class FakeTransactions:
    """Commits every transaction unless told otherwise; records what each one carried.

    ``hold[n]`` keeps transaction n open until set; ``abort`` lists transactions that abort;
    ``fenced`` has every transaction find this instance fenced.
    """

    def __init__(self, *, abort: set[int] | None = None, fenced: bool = False) -> None:
        self.abort = abort or set()
        self.fenced = fenced
        self.hold: dict[int, asyncio.Event] = {}
        self.carried: list[tuple[list[OutboundMessage], dict[tuple[str, int], int]]] = []
        self.committed: list[int] = []  # indexes into ``carried``

    async def publish(
        self,
        messages: Sequence[OutboundMessage],
        offsets: dict[tuple[str, int], int],
        group_id: str,
        *,
        confirm: Any = None,
    ) -> None:
        n = len(self.carried)
        self.carried.append((list(messages), dict(offsets)))
        if n in self.hold:
            await self.hold[n].wait()
        if self.fenced:
            raise Fenced("transactional id t.vision was taken over")
        if n in self.abort:
            raise TransactionAborted("a send was refused")
        self.committed.append(n)

    def ids(self, n: int) -> list[str]:
        """The request ids answered on the results topic by transaction ``n``."""
        return [
            CODEC.decode_record(m.value, VisionResult).request_id
            for m in self.carried[n][0]
            if m.topic == TOPICS.vision_results
        ]


def _batch(
    processor: FakeProcessor,
    offsets: range,
    reply: str | None = None,
    *,
    epoch: int = 0,
    key: bytes | None = b"k",
    partition: int = 0,
) -> list[InboundRecord]:
    records = []
    for offset in offsets:
        request = make_request("vision", "classify", b"p", request_id=f"r{offset}", reply_topic=reply)
        processor.requests[offset] = request
        value = CODEC.encode_record(request)
        records.append(InboundRecord(TOPICS.vision_requests, partition, offset, key, value, (), 1, epoch))
    return records


def _ids(messages: list[OutboundMessage]) -> list[str]:
    return [CODEC.decode_record(m.value, VisionResult).request_id for m in messages]


async def _until(done: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


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


def _exactly_once(
    consumer: FakeConsumer, processor: FakeProcessor, transactions: FakeTransactions, **kwargs: Any
) -> StreamWorker:
    return StreamWorker(
        consumer,  # type: ignore[arg-type]
        processor,  # type: ignore[arg-type]
        FakePublisher(),  # type: ignore[arg-type]
        transactions=transactions,  # type: ignore[arg-type]
        retry_backoff_s=0.01,
        **kwargs,
    )


# ---------------------------------------------------------------- at-least-once
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


async def test_a_batch_answered_before_the_one_fetched_earlier_still_publishes_after_it() -> None:
    processor = FakeProcessor(delays={0: 0.1})
    consumer = FakeConsumer([_batch(processor, range(0, 2)), _batch(processor, range(2, 4))])
    publisher = FakePublisher()
    worker = StreamWorker(consumer, processor, publisher)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await _until(lambda: len(publisher.sent) == 4)
    publisher.ack_all()
    await _until(lambda: len(consumer.finished_offsets) == 4)
    stop.set()
    await task
    assert processor.answered == [2, 3, 0, 1]
    assert _ids(publisher.sent) == ["r0", "r1", "r2", "r3"]


async def test_a_slow_request_holds_up_only_later_requests_with_its_key() -> None:
    # An LLM request generating for a long time must not hold up the answers fetched after it,
    # except those whose key promises they leave after it (Kafka's order is per key).
    processor = FakeProcessor(delays={0: 0.3})
    consumer = FakeConsumer(
        [
            _batch(processor, range(0, 1), key=b"slow"),
            _batch(processor, range(1, 2), key=b"other"),
            _batch(processor, range(2, 3), key=None),
            _batch(processor, range(3, 4), key=b"slow"),
        ]
    )
    publisher = FakePublisher()
    worker = StreamWorker(consumer, processor, publisher)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await _until(lambda: len(publisher.sent) == 2)
    assert sorted(_ids(publisher.sent)) == ["r1", "r2"]  # published while r0 still runs
    publisher.ack_all()
    await _until(lambda: len(consumer.finished_offsets) == 2)
    assert processor.answered[:3] == [1, 2, 3]  # r3 was answered early, and waits to be published
    await _until(lambda: len(publisher.sent) == 4)
    publisher.ack_all()
    await _until(lambda: len(consumer.finished_offsets) == 4)
    stop.set()
    await task
    assert _ids(publisher.sent)[2:] == ["r0", "r3"]
    assert sorted(consumer.finished_offsets) == [0, 1, 2, 3]
    assert worker._latest == {}  # nothing in flight is remembered for ordering


async def test_a_send_that_fails_at_first_is_retried_and_its_batch_finishes() -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer([_batch(processor, range(0, 2))])
    publisher = FakePublisher(flaky={TOPICS.vision_results})
    worker = StreamWorker(consumer, processor, publisher)  # type: ignore[arg-type]
    await _run_until(worker, lambda: len(consumer.finished_offsets) == 2)
    assert consumer.finished_offsets == [0, 1]
    assert _ids(publisher.sent) == ["r0", "r1"]  # each once: the retry, no error result


async def test_an_answer_no_topic_takes_is_dropped_with_an_error_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer([_batch(processor, range(0, 1)), _batch(processor, range(1, 3))])
    nowhere = {
        TOPICS.vision_results: ErrorCode.PUBLISH_REFUSED,
        TOPICS.dead_letter: ErrorCode.PUBLISH_REFUSED,
    }
    publisher = FakePublisher(nowhere)
    worker = StreamWorker(consumer, processor, publisher)  # type: ignore[arg-type]
    await _run_until(worker, lambda: len(consumer.finished_offsets) == 3)
    assert consumer.finished_offsets == [0, 1, 2]
    assert publisher.sent == []
    assert "dropping an unpublishable answer" in caplog.text
    assert worker.fatal is None


# ---------------------------------------------------------------- exactly-once
async def test_exactly_once_commits_one_transaction_per_window_of_finished_batches() -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer([_batch(processor, range(0, 2))])
    transactions = FakeTransactions()
    transactions.hold[0] = asyncio.Event()
    worker = _exactly_once(consumer, processor, transactions)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await _until(lambda: len(transactions.carried) == 1)  # the first batch's, held open
    consumer.batches += [_batch(processor, range(2, 4)), _batch(processor, range(4, 5))]
    await _until(lambda: len(processor.answered) == 5)
    await asyncio.sleep(0.05)  # both reach the committer while the first transaction is open
    assert consumer.finished_offsets == []
    transactions.hold[0].set()
    await _until(lambda: len(consumer.finished_offsets) == 5)
    stop.set()
    await task
    assert [transactions.ids(n) for n in range(len(transactions.carried))] == [
        ["r0", "r1"],
        ["r2", "r3", "r4"],
    ]
    assert transactions.carried[1][1] == {(TOPICS.vision_requests, 0): 5}
    assert consumer.finished_offsets == [0, 1, 2, 3, 4]
    assert worker.progress.stalled_s() == 0.0


async def test_exactly_once_a_slow_partition_holds_up_only_its_own_later_batches() -> None:
    # A transaction commits a partition's offsets up to its last record there, so a later batch of
    # the slow batch's partition may never reach the committer first; another partition's may.
    processor = FakeProcessor(delays={0: 0.3})
    consumer = FakeConsumer(
        [
            _batch(processor, range(0, 1), partition=0),
            _batch(processor, range(1, 2), partition=1, key=b"other"),
            _batch(processor, range(2, 3), partition=0, key=b"other"),
        ]
    )
    transactions = FakeTransactions()
    worker = _exactly_once(consumer, processor, transactions)
    await _run_until(worker, lambda: len(consumer.finished_offsets) == 3)
    committed = [transactions.ids(n) for n in transactions.committed]
    assert committed[0] == ["r1"]  # committed while r0 still ran
    flat = [rid for ids in committed for rid in ids]
    assert flat.index("r0") < flat.index("r2")
    _assert_offsets_never_pass_an_uncommitted_record(transactions, {0: 0, 1: 1, 2: 0})


async def test_exactly_once_a_batch_of_two_partitions_waits_for_both_and_holds_up_both() -> None:
    processor = FakeProcessor(delays={0: 0.3})
    consumer = FakeConsumer(
        [
            _batch(processor, range(0, 1), partition=0),  # slow
            _batch(processor, range(1, 2), partition=1, key=b"a"),
            _batch(processor, range(2, 3), partition=0, key=b"b")
            + _batch(processor, range(3, 4), partition=1, key=b"c"),  # one batch on both partitions
            _batch(processor, range(4, 5), partition=1, key=b"d"),
            _batch(processor, range(5, 6), partition=2, key=b"e"),
        ]
    )
    transactions = FakeTransactions()
    worker = _exactly_once(consumer, processor, transactions)
    await _run_until(worker, lambda: len(consumer.finished_offsets) == 6)
    flat = [rid for n in transactions.committed for rid in transactions.ids(n)]
    assert sorted(flat) == [f"r{i}" for i in range(6)]
    assert flat.index("r0") < flat.index("r2") < flat.index("r4")  # p0's slow batch, then the spanning one
    assert flat.index("r1") < flat.index("r2")  # ... which also waited for p1's earlier batch
    assert flat.index("r5") < flat.index("r0")  # another partition passed them all
    _assert_offsets_never_pass_an_uncommitted_record(transactions, {0: 0, 1: 1, 2: 0, 3: 1, 4: 1, 5: 2})


def _assert_offsets_never_pass_an_uncommitted_record(
    transactions: FakeTransactions, layout: dict[int, int]
) -> None:
    """Each committed offset of a partition covers only records committed by then, and never goes back.

    ``layout``: offset -> partition of every record (offsets are unique across partitions here).
    """
    committed: set[int] = set()
    high: dict[int, int] = {}
    for n in transactions.committed:
        committed |= {int(rid[1:]) for rid in transactions.ids(n)}
        for (_, partition), upto in transactions.carried[n][1].items():
            assert upto >= high.get(partition, 0), "a committed offset went backwards"
            high[partition] = upto
            below = {o for o, p in layout.items() if p == partition and o < upto}
            assert below <= committed, f"partition {partition} committed past an uncommitted record"


async def test_exactly_once_an_aborted_transaction_drops_later_batches_and_rewinds() -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer([_batch(processor, range(0, 2))])
    transactions = FakeTransactions(abort={0})
    transactions.hold[0] = asyncio.Event()
    worker = _exactly_once(consumer, processor, transactions)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await _until(lambda: len(transactions.carried) == 1)
    consumer.batches.append(_batch(processor, range(2, 4)))  # answered while the first aborts
    await _until(lambda: len(processor.answered) == 4)
    await asyncio.sleep(0.05)
    transactions.hold[0].set()
    await _until(lambda: len(consumer.finished_offsets) == 4)
    stop.set()
    await task
    assert consumer.rewinds == 1
    assert transactions.ids(0) == ["r0", "r1"]  # aborted; the later batch never went in before the rewind
    again = [rid for n in transactions.committed for rid in transactions.ids(n)]
    assert again == ["r0", "r1", "r2", "r3"]  # each answered once more, in order, committed once
    assert sorted(consumer.finished_offsets) == [0, 1, 2, 3]


async def test_exactly_once_batches_of_a_revoked_epoch_are_dropped_uncommitted() -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer(
        [_batch(processor, range(0, 2), epoch=1), _batch(processor, range(2, 4), epoch=2)]
    )
    consumer.ownership.epoch = 2  # the first batch was fetched before a revocation
    transactions = FakeTransactions()
    worker = _exactly_once(consumer, processor, transactions)
    await _run_until(worker, lambda: consumer.abandoned_offsets and consumer.finished_offsets)
    assert consumer.abandoned_offsets == [0, 1]
    assert consumer.finished_offsets == [2, 3]
    assert [rid for n in range(len(transactions.carried)) for rid in transactions.ids(n)] == ["r2", "r3"]
    assert [offsets for _, offsets in transactions.carried] == [{(TOPICS.vision_requests, 0): 4}]
    assert worker.progress.stalled_s() == 0.0


async def test_exactly_once_a_fenced_producer_stops_the_instance_without_committing() -> None:
    processor = FakeProcessor()
    consumer = FakeConsumer([_batch(processor, range(0, 2)), _batch(processor, range(2, 4))])
    worker = _exactly_once(consumer, processor, FakeTransactions(fenced=True))
    with pytest.raises(Fenced):
        await _run_until(worker, lambda: False, timeout_s=2.0)
    assert isinstance(worker.fatal, Fenced)
    assert consumer.finished_offsets == []


async def test_exactly_once_a_result_too_large_goes_out_as_an_error_result_in_the_transaction() -> None:
    processor = FakeProcessor(label="x" * 4000)
    consumer = FakeConsumer([_batch(processor, range(0, 1))])
    transactions = FakeTransactions()
    worker = _exactly_once(consumer, processor, transactions, max_message_bytes=2000)
    await _run_until(worker, lambda: consumer.finished_offsets == [0])
    messages, offsets = transactions.carried[0]
    assert offsets == {(TOPICS.vision_requests, 0): 1}
    results = [
        CODEC.decode_record(m.value, VisionResult) for m in messages if m.topic == TOPICS.vision_results
    ]
    assert [(r.request_id, r.status, r.error and r.error.code) for r in results] == [
        ("r0", ResultStatus.ERROR, "RESULT_TOO_LARGE")
    ]
    letters = [CODEC.decode_record(m.value, DeadLetter) for m in messages if m.topic == TOPICS.dead_letter]
    assert [letter.offset for letter in letters] == [0]
