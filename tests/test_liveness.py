"""Progress: stalled only while work waits, and stuck records counted by age."""

from __future__ import annotations

from altlas.orchestration.observability.liveness import Progress


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


def test_loop_lag_keeps_the_worst_of_a_sliding_window_and_of_the_run() -> None:
    from altlas.orchestration.observability.loop_lag import LoopLag

    lag = LoopLag(window_s=5.0)
    for t, late in [(0.0, 0.01), (1.0, 0.3), (2.0, 0.02), (6.5, 0.05), (7.0, 0.04)]:
        lag.record(late, now=t)
    assert lag.recent_max(now=5.9) == 0.3
    assert lag.recent_max(now=7.0) == 0.05  # the 0.3 at t=1 left the window
    assert lag.worst_s == 0.3
    assert lag.recent_max(now=20.0) == 0.0


async def test_loop_lag_measures_a_blocking_call() -> None:
    import asyncio
    import time

    from altlas.orchestration.observability.loop_lag import LoopLag

    lag = LoopLag(interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(lag.run(stop))
    await asyncio.sleep(0.05)
    time.sleep(0.3)  # noqa: ASYNC251 - something holding the loop is what is measured
    await asyncio.sleep(0.05)
    stop.set()
    await task
    assert 0.25 <= lag.worst_s < 1.0
