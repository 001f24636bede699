"""In-order offset commits for out-of-order completion.

Records of one partition may finish in any order (different models, retries),
but Kafka stores one committed offset per partition: everything below it is
considered done. So the committable offset is one past the longest prefix of
finished records, and a slow record holds back the commit of everything after
it. That is the at-least-once rule: after a crash, nothing unfinished is
skipped; finished records above the gap may be processed again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class _PartitionState:
    pending: deque[int] = field(default_factory=deque)  # offsets in arrival order
    done: set[int] = field(default_factory=set)
    committable: int | None = None  # next offset to commit (last finished + 1)


class OffsetTracker:
    """Tracks started and finished offsets per partition."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}
        self._committed: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        """A record was handed out for processing (offsets arrive increasing)."""
        self._parts.setdefault(tp, _PartitionState()).pending.append(offset)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        """A record's outcome is durably published."""
        state = self._parts.get(tp)
        if state is None:
            return  # partition was revoked meanwhile; its new owner will redo it
        state.done.add(offset)
        while state.pending and state.pending[0] in state.done:
            head = state.pending.popleft()
            state.done.discard(head)
            state.committable = head + 1

    def pending_count(self, tp: TopicPartition | None = None) -> int:
        """Records started but not finished (in one partition, or in all)."""
        if tp is not None:
            state = self._parts.get(tp)
            return len(state.pending) if state else 0
        return sum(len(s.pending) for s in self._parts.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Offsets that moved since the last ``committed`` call."""
        out = {}
        for tp, state in self._parts.items():
            if state.committable is not None and state.committable != self._committed.get(tp):
                out[tp] = state.committable
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record that these offsets reached the broker."""
        self._committed.update(offsets)

    def forget(self, tps: set[TopicPartition]) -> None:
        """Drop partitions this consumer no longer owns."""
        for tp in tps:
            self._parts.pop(tp, None)
            self._committed.pop(tp, None)
