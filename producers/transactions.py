"""Exactly-once output: a micro-batch's answers and its input offsets in one Kafka transaction.

Readers with ``isolation_level=read_committed`` see a batch's results only if
its offsets were committed with them, so a crash anywhere yields either both or
neither: no lost and no duplicated answers. One transaction per micro-batch
(not per message, not per fixed interval) keeps the cost (tens of ms) shared
by the whole batch and the latency bounded by one batch.

A message the broker refuses for good (a forbidden reply topic, a record over
the topic's size limit) aborts its transaction; the refusal is remembered in
``Refusals``, so the replayed batch answers that record with an error result
instead and the stream moves on.

aiokafka has rough edges here: some retriable coordinator errors during
``send_offsets_to_transaction`` leave the producer in a state where even
``abort_transaction`` fails. Any failure therefore aborts if it can and
otherwise replaces the producer (same transactional id: the broker bumps the
epoch and discards the open transaction); the caller then rewinds its
consumer to the committed offsets and tries again. Only being fenced by
another producer with the same transactional id is fatal.

aiokafka sends the offsets without the consumer's generation (no KIP-447), so
the broker would take them from a member the group already expelled; the
caller's ``confirm`` (``consumers/ownership.py``) asks the group right before
EndTxn instead, and a member that is no longer in it aborts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId

from altlas.producers.partitioner import KeyPartitioner
from altlas.producers.publisher import OutboundMessage
from altlas.producers.refusals import TOPIC_TIMED_OUT, Fate, Refusals, verdict
from altlas.producers.swap import retrieve_error

log = logging.getLogger(__name__)

_BROKEN_SEQUENCE = (OutOfOrderSequenceNumber, UnknownProducerId)


class Fenced(Exception):
    """Another instance took over this transactional id: this one is a zombie and must stop."""


class TransactionAborted(Exception):
    """The batch's transaction did not commit; nothing of it is visible. Rewind and retry."""


class NotAMember(Exception):
    """The consumer group no longer counts this member in: its offsets must not commit."""


class TransactionalPublisher:
    """One transactional producer; transactions run one at a time."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        transactional_id: str,
        *,
        max_request_size: int = 1024 * 1024,
        linger_ms: int = 2,
        transaction_timeout_ms: int = 60_000,
        refusals: Refusals | None = None,
        send_timeout_s: float = 30.0,
    ) -> None:
        self.transactional_id = transactional_id
        self.send_timeout_s = send_timeout_s
        self.refusals = refusals if refusals is not None else Refusals()
        self._kwargs = {
            **client_kwargs,
            "transactional_id": transactional_id,
            "enable_idempotence": True,
            "acks": "all",
            "max_request_size": max_request_size,
            "max_batch_size": max(max_request_size, 1024 * 1024),
            "linger_ms": linger_ms,
            "transaction_timeout_ms": transaction_timeout_ms,
            "partitioner": KeyPartitioner(),
        }
        self._producer = AIOKafkaProducer(**self._kwargs)
        self._lock = asyncio.Lock()
        self.commits = 0
        self.aborts = 0

    async def start(self) -> None:
        """Connect and initialise the transactional id (fencing older producers with it)."""
        await self._producer.start()

    async def stop(self) -> None:
        """Close (an open transaction is aborted by the broker after its timeout)."""
        await self._producer.stop()

    async def publish(
        self,
        messages: Sequence[OutboundMessage],
        offsets: dict[tuple[str, int], int],
        group_id: str,
        *,
        confirm: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Produce ``messages`` and commit ``offsets`` for ``group_id`` atomically, if ``confirm`` agrees."""
        async with self._lock:
            producer = self._producer
            sent: list[tuple[OutboundMessage, asyncio.Future[Any]]] = []
            try:
                await producer.begin_transaction()
                for msg in messages:
                    try:
                        future = await producer.send(
                            msg.topic, msg.value, key=msg.key, headers=list(msg.headers)
                        )
                    except Exception as exc:
                        self._note(msg, exc)
                        raise
                    # The commit below is what we wait on; an aborted send's own error is
                    # read here so that it is not reported as "never retrieved".
                    future.add_done_callback(retrieve_error)
                    sent.append((msg, future))
                if offsets:
                    await producer.send_offsets_to_transaction(
                        {TopicPartition(t, p): off for (t, p), off in offsets.items()}, group_id
                    )
                # aiokafka commits a transaction even when one of its sends was refused, and that
                # answer would vanish: every send must be acknowledged before the commit.
                # A topic that never acknowledges must not hold the committer (and the modality).
                _, waiting = (
                    await asyncio.wait([f for _, f in sent], timeout=self.send_timeout_s)
                    if sent
                    else ((), ())
                )
                for msg, future in sent:
                    if future in waiting:
                        self.refusals.refuse(
                            msg.topic, msg.key, TOPIC_TIMED_OUT, "no acknowledgement in time"
                        )
                if waiting:
                    raise TimeoutError(
                        f"{len(waiting)} sends not acknowledged within {self.send_timeout_s:.0f}s"
                    )
                refused = next((f.exception() for _, f in sent if not f.cancelled() and f.exception()), None)
                if refused is not None:
                    raise refused
                if confirm is not None and offsets and not await confirm():
                    raise NotAMember(f"group {group_id} no longer counts this member in")
                await producer.commit_transaction()
                self.commits += 1
            except ProducerFenced as exc:
                raise Fenced(f"transactional id {self.transactional_id} was taken over: {exc}") from exc
            except asyncio.CancelledError:
                await self._abort_or_replace()
                raise
            except Exception as exc:
                errors: list[BaseException] = [exc]
                for msg, future in sent:
                    if future.done() and not future.cancelled() and future.exception() is not None:
                        errors.append(future.exception())  # type: ignore[arg-type]
                        self._note(msg, future.exception())  # type: ignore[arg-type]
                self.aborts += 1
                log.warning(
                    "transaction aborted (%s: %s); the batch will be retried", type(exc).__name__, exc
                )
                # A broken sequence (a refused batch leaves one) fails every later transaction of
                # this producer too, however cleanly this one aborts: start a new one at once. Not
                # on an epoch error: a newer epoch is another process with this id, to be fenced by.
                broken = any(isinstance(e, _BROKEN_SEQUENCE) for e in errors)
                await self._abort_or_replace(replace=broken)
                raise TransactionAborted(str(exc)) from exc

    def _note(self, msg: OutboundMessage, exc: BaseException) -> None:
        """Remember a refusal, so that the replayed batch answers that record another way."""
        judged = verdict(exc)
        if judged.fate is Fate.REFUSED:
            self.refusals.refuse(msg.topic, msg.key, judged, f"{type(exc).__name__}: {exc}")

    async def _abort_or_replace(self, *, replace: bool = False) -> None:
        try:
            await asyncio.wait_for(self._producer.abort_transaction(), 30)
            if not replace:
                return
            log.warning("the transactional producer's sequence is broken; replacing it")
        except Exception as exc:
            log.warning("abort failed (%s); replacing the transactional producer", exc)
        try:
            await self._producer.stop()
        except Exception as exc:
            log.debug("stopping the broken producer: %s", exc)
        self._producer = AIOKafkaProducer(**self._kwargs)
        await self._producer.start()
