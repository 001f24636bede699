"""Committed offsets never pass an unfinished record, whatever the completion order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from altlas.consumers.offsets import OffsetTracker

TP = ("t", 0)


@given(st.permutations(list(range(30))), st.integers(0, 30))
def test_committable_offset_is_one_past_the_longest_finished_prefix(order: list[int], finished: int) -> None:
    tracker = OffsetTracker()
    for offset in range(100, 130):
        tracker.started(TP, offset)
    done = set(order[:finished])
    for i in order[:finished]:
        tracker.finished(TP, 100 + i)
    prefix = 0
    while prefix in done:
        prefix += 1
    expected = {TP: 100 + prefix} if prefix else {}
    assert tracker.to_commit() == expected
    assert tracker.pending_count(TP) == 30 - prefix


def test_committed_offsets_are_not_offered_twice_and_revoked_partitions_are_forgotten() -> None:
    tracker = OffsetTracker()
    for offset in (5, 6, 7):
        tracker.started(TP, offset)
    tracker.finished(TP, 5)
    assert tracker.to_commit() == {TP: 6}
    tracker.committed({TP: 6})
    assert tracker.to_commit() == {}
    tracker.forget({TP})
    tracker.finished(TP, 6)  # finishing after revocation is harmless
    assert tracker.to_commit() == {} and tracker.pending_count() == 0
