"""Committed offsets that no open transaction can still move (KIP-447's OffsetFetch ``require_stable``).

A member that takes over a partition starts from the group's committed offset.
If the previous owner is a zombie whose transaction already holds offsets for
that partition (sent, not yet committed), that offset is about to move: a new
owner starting below it answers records the zombie's commit answers too. With
``require_stable`` the group coordinator answers UNSTABLE_OFFSET_COMMIT while
such a transaction is open, so the new owner waits until the zombie commits
(it then starts after the zombie's records) or the transaction aborts or times
out (it then redoes them). aiokafka 0.14 speaks OffsetFetch up to v3, which has
no such flag, so this module sends v7 itself through the consumer's group
coordinator connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

log = logging.getLogger(__name__)

UNSTABLE_OFFSET_COMMIT = 88
COORDINATOR_MOVED = frozenset({14, 15, 16})  # loading, not available, not the coordinator: ask again


class _OffsetFetchResponseV7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class _OffsetFetchRequestV7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = _OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class _StableOffsetFetch(Request[_OffsetFetchRequestV7]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(
        self, group_id: str, partitions: Iterable[TopicPartition], require_stable: bool = True
    ) -> None:
        self._require_stable = require_stable
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        self._group_id = group_id
        self._topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (topic, sorted(parts), {}) for topic, parts in sorted(by_topic.items())
        ]

    def build(self, request_struct_class: type[_OffsetFetchRequestV7]) -> _OffsetFetchRequestV7:
        return request_struct_class(self._group_id, self._topics, self._require_stable, {})


async def stable_committed(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], timeout_s: float
) -> dict[TopicPartition, int | None]:
    """Committed offsets (None: none yet) once no open transaction holds offsets for these partitions.

    Waits at most ``timeout_s`` for open transactions; after that it returns the
    offsets last committed for good, and says so. A coordinator that is moving
    is asked again, however long that takes: guessing would restart a partition.
    """
    wanted = list(partitions)
    if not wanted:
        return {}
    deadline = time.monotonic() + timeout_s
    waited = False
    while True:
        offsets, unstable = await _fetch(consumer, wanted, require_stable=True)
        if not unstable:
            if waited:
                log.info("pending transactional offsets settled", extra={"partitions": len(wanted)})
            return offsets
        if time.monotonic() > deadline:
            log.warning("offsets still held by an open transaction after %.0fs; starting anyway", timeout_s)
            settled, _ = await _fetch(consumer, wanted, require_stable=False)
            return settled
        if not waited:
            log.info(
                "waiting for an open transaction of the partitions' previous owner",
                extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in unstable)},
            )
        waited = True
        await asyncio.sleep(0.2)


async def seek_committed(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], timeout_s: float
) -> None:
    """Move each partition to its stable committed offset, or to its beginning when it has none."""
    for tp, offset in (await stable_committed(consumer, partitions, timeout_s)).items():
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)


async def _fetch(
    consumer: AIOKafkaConsumer, wanted: list[TopicPartition], *, require_stable: bool
) -> tuple[dict[TopicPartition, int | None], list[TopicPartition]]:
    """One OffsetFetch v7 that the coordinator answered: the offsets, and the partitions still unstable."""
    coordinator = consumer._coordinator
    while True:
        await coordinator.ensure_coordinator_known()
        try:
            response = await coordinator._send_req(
                _StableOffsetFetch(coordinator.group_id, wanted, require_stable)
            )
        except KafkaError as exc:  # _send_req has marked the coordinator dead: find it again
            log.debug("offset fetch failed (%s); retrying", exc)
            await asyncio.sleep(0.2)
            continue
        if response.error_code in COORDINATOR_MOVED:
            coordinator.coordinator_dead()
            await asyncio.sleep(0.2)
            continue
        if response.error_code:
            raise for_code(response.error_code)()
        offsets: dict[TopicPartition, int | None] = {}
        unstable = []
        moved = False
        for topic, parts, _tags in response.topics:
            for partition, offset, _epoch, _meta, error, _tags in parts:
                tp = TopicPartition(topic, partition)
                if error == UNSTABLE_OFFSET_COMMIT:
                    unstable.append(tp)
                elif error in COORDINATOR_MOVED:
                    moved = True
                elif error:
                    raise for_code(error)()
                offsets[tp] = offset if offset >= 0 else None
        missing = [tp for tp in wanted if tp not in offsets]
        if moved or missing:
            log.debug("offset fetch answered without %d partitions; retrying", len(missing))
            coordinator.coordinator_dead()
            await asyncio.sleep(0.2)
            continue
        return offsets, unstable
