"""Reading committed offsets while the group coordinator moves (consumers/stable_offsets.py).

From OffsetFetch v2 on, a coordinator that is loading or has moved answers with a
group-level error and no partitions; aiokafka 0.14 reads that as "nothing
committed", so a rewind during a broker restart started the partition over (a
real cluster run answered 1,676 records twice under exactly-once). These fakes
stand for the coordinator connection only; tests/test_revocation.py and the
cluster chaos suite cover the real broker.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from altlas.consumers.stable_offsets import UNSTABLE_OFFSET_COMMIT, seek_committed, stable_committed

TP = TopicPartition("ai.requests.vision", 4)


class FakeCoordinator:
    def __init__(self, answers: list[Any]) -> None:
        self.group_id = "g"
        self.answers = answers
        self.asked: list[bool] = []
        self.dead = 0

    async def ensure_coordinator_known(self) -> None:
        return None

    def coordinator_dead(self) -> None:
        self.dead += 1

    async def _send_req(self, request: Any) -> Any:
        self.asked.append(request._require_stable)
        return self.answers.pop(0)


class FakeConsumer:
    def __init__(self, answers: list[Any]) -> None:
        self._coordinator = FakeCoordinator(answers)
        self.sought: dict[TopicPartition, int | str] = {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.sought[tp] = "beginning"


def answer(error: int = 0, parts: list[tuple[int, int, int]] | None = None) -> Any:
    partitions = [(p, off, -1, "", err, {}) for p, off, err in (parts or [])]
    return SimpleNamespace(error_code=error, topics=[(TP.topic, partitions, {})] if partitions else [])


async def test_a_coordinator_on_the_move_is_asked_again_not_read_as_nothing_committed() -> None:
    consumer = FakeConsumer([answer(error=14), answer(error=16), answer(parts=[(4, 647, 0)])])
    await seek_committed(consumer, [TP], timeout_s=5)  # type: ignore[arg-type]
    assert consumer.sought == {TP: 647}
    assert consumer._coordinator.dead == 2


async def test_a_partition_without_a_committed_offset_starts_at_its_beginning() -> None:
    consumer = FakeConsumer([answer(parts=[(4, -1, 0)])])
    await seek_committed(consumer, [TP], timeout_s=5)  # type: ignore[arg-type]
    assert consumer.sought == {TP: "beginning"}


async def test_an_open_transaction_past_the_wait_gives_the_last_settled_offset_not_the_beginning() -> None:
    consumer = FakeConsumer([answer(parts=[(4, -1, UNSTABLE_OFFSET_COMMIT)]), answer(parts=[(4, 300, 0)])])
    offsets = await stable_committed(consumer, [TP], timeout_s=0)  # type: ignore[arg-type]
    assert offsets == {TP: 300}
    assert consumer._coordinator.asked == [True, False]
