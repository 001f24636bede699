"""Progress: stalled only while work waits, and stuck records counted by age."""

from __future__ import annotations

from altlas.orchestration.liveness import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_idle_modality_is_never_stalled() -> None:
    clock = Clock()
    progress = Progress(clock)
    clock.now += 1000
    assert progress.stalled_s() == 0.0
    token = progress.started(5)
    clock.now += 3
    assert progress.stalled_s() == 3.0  # the wait started with the batch, not at the last finish
    progress.finished(token)
    assert progress.stalled_s() == 0.0


def test_a_batch_that_never_finishes_stalls_the_modality_while_others_keep_finishing_it_does_not() -> None:
    clock = Clock()
    progress = Progress(clock)
    stuck = progress.started(7)
    for _ in range(5):
        clock.now += 10
        progress.finished(progress.started(3))
    assert progress.stalled_s() == 0.0  # records still get answered: not stalled
    assert progress.stuck(older_than_s=30) == 7  # but the old batch is stuck, and counted
    clock.now += 60
    assert progress.stalled_s() == 60.0
    progress.dropped(stuck)
    assert progress.stuck(older_than_s=0) == 0 and progress.stalled_s() == 0.0
