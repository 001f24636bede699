"""The loop of one modality: pull a micro-batch, answer it, publish in order, commit.

Batches overlap: while batch N waits for its acknowledgements, batch N+1 is
already being decoded and run. Publishing stays in batch order (batch N+1's
messages are queued only after batch N's), so results for one key leave in
the order their requests came.

At-least-once (default): a batch's offsets are marked finished only when every
message answering it was acknowledged, and the consumer commits only
contiguous finished prefixes. Exactly-once: a batch's answers and its offsets
go out in one transaction; when a transaction aborts, every later batch in
flight is dropped and the consumer rewinds to the committed offsets, so the
same records are answered again and only one answer ever becomes visible.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from altlas.consumers.records import InboundRecord
from altlas.consumers.stream import BatchingConsumer
from altlas.orchestration.observability.liveness import Progress
from altlas.orchestration.serving.processor import Outcome, RequestProcessor
from altlas.producers.publisher import OutboundMessage, PermanentSendError, Publisher, record_size
from altlas.producers.swap import retrieve_error
from altlas.producers.transactions import Fenced, TransactionAborted, TransactionalPublisher
from altlas.schemas.errors import AltlasError, ErrorCode, PayloadTooLargeError

log = logging.getLogger(__name__)


class StreamWorker:
    """Runs one modality's consume -> process -> publish -> commit loop."""

    def __init__(
        self,
        consumer: BatchingConsumer,
        processor: RequestProcessor,
        publisher: Publisher,
        *,
        max_batches_in_flight: int = 8,
        retry_backoff_s: float = 0.5,
        transactions: TransactionalPublisher | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        self.consumer = consumer
        self.processor = processor
        self.publisher = publisher
        self.transactions = transactions
        self.max_message_bytes = max_message_bytes
        self.max_batches_in_flight = max_batches_in_flight
        self.retry_backoff_s = retry_backoff_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._rewind_needed = False
        self._rewind_backoff = retry_backoff_s
        self.fatal: BaseException | None = None
        self._txn_work: list[tuple[list[OutboundMessage], list[InboundRecord], int]] = []
        self.progress = Progress()
        self._txn_ready = asyncio.Event()  # work is waiting for the committer
        self._txn_taken = asyncio.Event()  # the committer took the waiting work
        self._txn_idle = asyncio.Event()  # nothing waiting, nothing being committed
        self._txn_idle.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: fetch and hand batches to concurrent tasks."""
        previous = asyncio.Event()
        previous.set()
        committer = None
        if self.transactions is not None:
            committer = asyncio.create_task(self._commit_loop())
            committer.add_done_callback(self._committer_done)
        try:
            await self._fetch_loop(stop, previous)
        finally:
            if committer is not None:
                await self._finish_commits(committer)

    async def _finish_commits(self, committer: asyncio.Task[None]) -> None:
        """At stop: let batches still in flight reach the committer, then stop it."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)
        try:
            await asyncio.wait_for(self._txn_idle.wait(), timeout=30)
        except TimeoutError:
            left = len(self._txn_work)
            log.warning("stopping with %d batches uncommitted; they will be answered again", left)
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)

    def _committer_done(self, task: asyncio.Task[None]) -> None:
        """A committer that died unexpectedly stops the worker rather than stalling it."""
        if not task.cancelled() and task.exception() is not None and self.fatal is None:
            self.fatal = task.exception()
        self._txn_taken.set()

    async def _fetch_loop(self, stop: asyncio.Event, previous: asyncio.Event) -> None:
        while not stop.is_set():
            if self.fatal is not None:
                raise self.fatal
            if self._rewind_needed:
                await self._rewind()
                previous = asyncio.Event()
                previous.set()
                continue
            if len(self._tasks) >= self.max_batches_in_flight:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            if len(self._txn_work) >= self.max_batches_in_flight:
                self._txn_taken.clear()  # a commit is slow: stop fetching until it takes the backlog
                await self._txn_taken.wait()
                continue
            records = await self.consumer.next_batch()
            if not records:
                continue
            queued = asyncio.Event()
            handler = self._handle_transactional if self.transactions is not None else self._handle
            task = asyncio.create_task(
                handler(records, previous, queued, self.progress.started(len(records)))
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            previous = queued

    async def drain(self, timeout_s: float) -> bool:
        """Wait for in-flight batches; cancel what is left after ``timeout_s``."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return not pending

    async def _handle(
        self, records: list[InboundRecord], previous: asyncio.Event, queued: asyncio.Event, token: int
    ) -> None:
        try:
            await self._answer_and_publish(records, previous, queued)
        except asyncio.CancelledError:
            self.progress.dropped(token)
            raise
        except Exception as exc:
            # Its records stay started, so their partitions could never commit again: stopping (and
            # being restarted on the committed offsets) is the only way on that loses nothing.
            self.progress.dropped(token)
            log.error(
                "a batch failed while publishing (%s: %s); stopping this instance", type(exc).__name__, exc
            )
            self.fatal = self.fatal or exc
            raise
        self.progress.finished(token)

    async def _answer_and_publish(
        self, records: list[InboundRecord], previous: asyncio.Event, queued: asyncio.Event
    ) -> None:
        try:
            outcomes = await self._answer(records)
            chunk_acks = [ack for o in outcomes if o.chunks is not None for ack in await o.chunks.close()]
            await previous.wait()
            sends = [
                (outcome, msg, await self._enqueue(msg)) for outcome in outcomes for msg in outcome.messages
            ]
        finally:
            queued.set()  # never hold up later batches, even when this one failed
        # Wait for all acks at once, for at most the send time limit; only the rare message that
        # failed or is still waiting gets individual handling (a coroutine per message just to await
        # its future cost more than producing it): in batch order within a topic, topics at once, so
        # many bad reply topics cost one time limit, not one each.
        limit = self.publisher.config.send_timeout_s
        if sends:
            await asyncio.wait([f for _, _, f in sends], timeout=limit)
        retry: dict[str, list[tuple[Outcome, OutboundMessage, asyncio.Future[Any]]]] = {}
        for outcome, msg, future in sends:
            if not future.done() or future.cancelled() or future.exception() is not None:
                retry.setdefault(msg.topic, []).append((outcome, msg, future))
        if retry:
            await asyncio.gather(*(self._deliver_in_order(items) for items in retry.values()))
        if chunk_acks:  # streamed chunks: best effort, and never longer than the time limit
            for ack in chunk_acks:
                ack.add_done_callback(retrieve_error)
            await asyncio.wait(chunk_acks, timeout=limit)
        await self.consumer.finished(records)

    async def _deliver_in_order(
        self, items: list[tuple[Outcome, OutboundMessage, asyncio.Future[Any]]]
    ) -> None:
        for outcome, msg, future in items:
            await self._deliver(outcome, msg, future)

    async def _handle_transactional(
        self, records: list[InboundRecord], previous: asyncio.Event, queued: asyncio.Event, token: int
    ) -> None:
        """Answer a batch, then hand it, in batch order, to the committer."""
        handed = False
        try:
            outcomes = await self._answer(records)
            for outcome in outcomes:  # streamed chunks travel outside transactions (best effort)
                if outcome.chunks is not None:
                    await outcome.chunks.close()
            await previous.wait()
            if self._rewind_needed:
                return  # an earlier batch aborted: these records will be fetched and answered again
            # Nearly every answer can be sent as it is; the rest are checked at once (each may wait).
            unclear = [i for i, outcome in enumerate(outcomes) if not self._clear(outcome)]
            fitted = dict(
                zip(unclear, await asyncio.gather(*(self._fit(outcomes[i]) for i in unclear)), strict=True)
            )
            messages = [msg for i, outcome in enumerate(outcomes) for msg in fitted.get(i, outcome.messages)]
            self._txn_work.append((messages, records, token))
            handed = True
            self._txn_idle.clear()
            self._txn_ready.set()
        finally:
            queued.set()
            if not handed:
                self.progress.dropped(token)

    async def _commit_loop(self) -> None:
        """One transaction per window of finished batches, never one per batch.

        A transaction costs tens of milliseconds of broker round trips whatever
        its size, so committing batch by batch queues them up and latency grows
        with the queue. Instead, each transaction takes every batch that finished
        while the previous one was committing: at most one transaction of waiting.
        """
        assert self.transactions is not None
        while True:
            await self._txn_ready.wait()
            self._txn_ready.clear()
            work, self._txn_work = self._txn_work, []
            self._txn_taken.set()
            if work and not self._rewind_needed:
                await self._commit(work)
            if not self._txn_work:
                self._txn_idle.set()

    async def _commit(self, work: list[tuple[list[OutboundMessage], list[InboundRecord], int]]) -> None:
        """Publish these batches' answers and commit their offsets in one transaction.

        Only batches fetched in the consumer's current assignment epoch go in, and a
        revocation waits for the transaction to end (consumers/ownership.py): no
        transaction carries answers or offsets of a partition this member gave up.
        """
        assert self.transactions is not None
        if self.fatal is not None:
            return
        ownership = self.consumer.ownership
        async with ownership.committing():
            stale = [w for w in work if not ownership.current(w[1][0].epoch)]
            for _, records, token in stale:
                await self.consumer.abandon(records)
                self.progress.dropped(token)
            if stale:
                log.info("dropped %d batches of revoked partitions uncommitted", len(stale))
            work = [w for w in work if ownership.current(w[1][0].epoch)]
            if work:
                await self._commit_owned(work)

    async def _commit_owned(self, work: list[tuple[list[OutboundMessage], list[InboundRecord], int]]) -> None:
        assert self.transactions is not None
        messages = [m for batch_messages, _, _ in work for m in batch_messages]
        offsets: dict[tuple[str, int], int] = {}
        for _, records, _ in work:
            for rec in records:
                tp = (rec.topic, rec.partition)
                offsets[tp] = max(offsets.get(tp, 0), rec.offset + 1)
        try:
            await self.transactions.publish(
                messages, offsets, self.consumer.group_id, confirm=self.consumer.ownership.confirm
            )
        except TransactionAborted:
            self._rewind_needed = True
            return
        except Fenced as exc:
            log.error("%s; stopping this instance", exc)
            self.fatal = exc
            return
        self._rewind_backoff = self.retry_backoff_s
        for _, records, token in work:
            await self.consumer.finished(records)
            self.progress.finished(token)

    async def _rewind(self) -> None:
        """Drop every batch in flight and resume from the committed offsets."""
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._txn_work = []
        self.progress.drop_all()
        self._txn_idle.set()
        self._txn_taken.set()
        await asyncio.sleep(self._rewind_backoff)
        self._rewind_backoff = min(self._rewind_backoff * 2, 30.0)
        await self.consumer.rewind()
        self._rewind_needed = False
        log.warning("rewound to the committed offsets after an aborted transaction")

    def _clear(self, outcome: Outcome) -> bool:
        """Whether ``_fit`` would return the outcome's messages unchanged, known without waiting."""
        limit = self.max_message_bytes
        return all(
            (limit is None or record_size(msg) <= limit) and self.publisher.clear(msg)
            for msg in outcome.messages
        )

    async def _fit(self, outcome: Outcome) -> list[OutboundMessage]:
        """The outcome's messages, those that cannot be sent replaced: a transaction must not fail on them."""
        limit = self.max_message_bytes
        error: Exception | None = None
        for msg in outcome.messages:
            if limit is not None and record_size(msg) > limit:
                error = PayloadTooLargeError("result too large to publish", code=ErrorCode.RESULT_TOO_LARGE)
                break
            refused = await self.publisher.ready(msg)
            if refused is not None:
                error = AltlasError(f"{msg.topic}: {refused.reason}", code=refused.code)
                break
        if error is None:
            return outcome.messages
        replacement = self.processor.answers.failure(
            outcome.record, error, outcome.request, default_topic=not isinstance(error, PayloadTooLargeError)
        )
        fitted = []
        for msg in replacement.messages:
            if limit is None or record_size(msg) <= limit:
                fitted.append(msg)
            elif msg.topic == self.processor.ctx.topics.dead_letter and replacement.error is not None:
                fitted.append(
                    self.processor.dead_letter(
                        outcome.record, replacement.error, "PayloadTooLargeError", None, with_value=False
                    )
                )
        return fitted

    async def _answer(self, records: list[InboundRecord]) -> list[Outcome]:
        """Outcomes for a batch, retried with backoff while a dependency is down.

        Retrying (and holding the commit) rather than answering with errors is
        what keeps a registry outage from turning good requests into failures.
        """
        backoff = self.retry_backoff_s
        while True:
            try:
                return await self.processor.process(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "cannot answer a batch of %d yet (%s); retrying in %.1fs", len(records), exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _enqueue(self, msg: OutboundMessage) -> asyncio.Future[Any]:
        try:
            return await self.publisher.enqueue(msg)
        except Exception as exc:  # e.g. too large: raised at send time, not on the future
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def _deliver(self, outcome: Outcome, msg: OutboundMessage, future: asyncio.Future[Any]) -> None:
        """Wait for the ack; a message the broker refuses for good is replaced, never dropped."""
        try:
            await self.publisher.deliver(msg, future)
            return
        except PermanentSendError as exc:
            reason, code = str(exc), exc.code
        log.warning("cannot publish to %s (%s); sending an error result instead", msg.topic, reason)
        if msg.topic == self.processor.ctx.topics.dead_letter:
            # The dead letter itself did not fit: keep everything but the original value.
            info = outcome.error
            assert info is not None
            slim = self.processor.dead_letter(
                outcome.record, info, "PayloadTooLargeError", None, with_value=False
            )
            await self._deliver_last_resort(slim)
            return
        # The error result goes where the request wanted it when that topic still takes messages,
        # else to the results topic; the dead letter loses the original value only if it must.
        error = AltlasError(f"result could not be published: {reason}", code=code)
        answers = self.processor.answers
        replacement = answers.failure(outcome.record, error, outcome.request)
        for extra in replacement.messages:
            try:
                await self.publisher.deliver(extra)
                continue
            except PermanentSendError:
                pass
            info = replacement.error
            assert info is not None
            if extra.topic != self.processor.ctx.topics.dead_letter:
                fallback = answers.failure(outcome.record, error, outcome.request, default_topic=True)
                if fallback.messages and fallback.messages[0].topic != extra.topic:
                    await self._deliver_last_resort(fallback.messages[0])
                continue
            slim = self.processor.dead_letter(
                outcome.record, info, "PayloadTooLargeError", None, with_value=False
            )
            await self._deliver_last_resort(slim)

    async def _deliver_last_resort(self, msg: OutboundMessage) -> None:
        try:
            await self.publisher.deliver(msg)
        except PermanentSendError as exc:
            log.error("dropping an unpublishable answer for %s: %s", msg.topic, exc)
