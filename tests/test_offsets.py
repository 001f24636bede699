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


async def test_records_finished_behind_an_unfinished_one_still_count_against_the_in_flight_bound() -> None:
    # Answers leave out of fetch order (a slow LLM request holds up no other key), so a partition
    # can finish many records behind one that runs on; they cannot commit, and a crash would answer
    # them all again. The bound that pauses fetching must count them.
    from altlas.consumers.stream import BatchingConfig, BatchingConsumer

    consumer = BatchingConsumer(
        ["t"],
        group_id="g",
        client_kwargs={"bootstrap_servers": "127.0.0.1:1"},
        config=BatchingConfig(max_inflight=10),
    )
    tp = ("t", 0)
    for offset in range(12):
        consumer._commits.tracker.started(tp, offset)
    consumer._inflight = 12
    assert consumer._full()
    for offset in range(1, 12):  # everything but the head finishes and leaves the in-flight count
        consumer._commits.tracker.finished(tp, offset)
    consumer._inflight = 1
    assert consumer._full()  # 12 uncommittable records: still paused
    consumer._commits.tracker.finished(tp, 0)
    consumer._inflight = 0
    assert not consumer._full(0.5)
    await consumer._consumer.stop()  # never started: nothing to leave
