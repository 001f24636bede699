"""`altlas run`'s garbage-collector tuning: a frozen start-up heap, and cyclic garbage still freed in time."""

from __future__ import annotations

import asyncio
import gc
import weakref

from altlas.orchestration.app.gc_tuning import GcTuning
from altlas.orchestration.app.settings import ProcessSettings


class _Payload:
    """Stands for a request's payload bytes (bytes cannot be weakly referenced)."""

    def __init__(self) -> None:
        self.data = bytes(1_000_000)


def _fail(payload: _Payload) -> None:
    raise ValueError(f"corrupt payload of {len(payload.data)} bytes")


def _failed_into(out: list[BaseException], payload: _Payload) -> None:
    """As ``_failed_decode``, into a list that already exists (and may be old)."""
    try:
        _fail(payload)
    except ValueError as exc:
        out.append(exc)


def _failed_decode(payload: _Payload) -> list[BaseException]:
    """What a decoder does with a bad item: the exception is kept as that item's answer.

    The list holds the exception, whose traceback holds the catching frame, which
    holds the list: a cycle that keeps the payload alive until a collection finds it.
    """
    out: list[BaseException] = []
    _failed_into(out, payload)
    return out


def test_apply_raises_the_threshold_and_freezes_restore_undoes_both() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    tuning = GcTuning(
        ProcessSettings(gc_threshold=50_000, gc_freeze=True, gc_sweep_s=None, gc_full_sweep_s=None)
    )
    try:
        tuning.apply()
        assert gc.get_threshold() == (50_000, *before[1:])
        assert gc.get_freeze_count() > frozen_before + 1000  # modules, schemas, this test's objects
    finally:
        tuning.restore()
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen_before


def test_unset_settings_leave_pythons_collector_alone() -> None:
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    tuning = GcTuning(
        ProcessSettings(gc_threshold=None, gc_freeze=False, gc_sweep_s=None, gc_full_sweep_s=None)
    )
    tuning.apply()
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen_before
    tuning.restore()


async def _garbage_payload_outlives(tuning: GcTuning, wait_s: float, *, through_old: bool = False) -> bool:
    """Leave a failed request's cyclic garbage under ``tuning``: is its payload alive ``wait_s`` later?

    ``through_old``: the cycle runs through a list that is already in the oldest generation.
    """
    old: list[BaseException] = []
    gc.collect()  # ``old`` survives a full collection: now in the oldest generation
    tuning.apply()
    sweeper = asyncio.create_task(tuning.sweep())
    try:
        freed = asyncio.Event()
        payload = _Payload()
        alive = weakref.ref(payload, lambda _: freed.set())
        if through_old:
            _failed_into(old, payload)
        else:
            _failed_decode(payload)
        del payload, old
        await asyncio.sleep(0)
        assert alive() is not None, "no cycle held the payload: the test proves nothing"
        try:
            await asyncio.wait_for(freed.wait(), wait_s)
        except TimeoutError:
            return True
        return False
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        tuning.restore()
        gc.collect()


def _tuning(sweep_s: float | None, full_sweep_s: float | None) -> GcTuning:
    return GcTuning(
        ProcessSettings(
            gc_threshold=1_000_000, gc_freeze=False, gc_sweep_s=sweep_s, gc_full_sweep_s=full_sweep_s
        )
    )


async def test_a_young_sweep_frees_a_failed_requests_payload_that_the_threshold_alone_would_keep() -> None:
    tuning = _tuning(0.1, None)
    assert not await _garbage_payload_outlives(tuning, wait_s=1.0), "cyclic garbage outlived the sweep period"
    assert tuning.sweeps >= 1 and tuning.full_sweeps == 0


async def test_without_sweeps_the_same_garbage_waits_for_the_threshold() -> None:
    """The control: the sweep, not some other collection, is what freed the payload above."""
    assert await _garbage_payload_outlives(_tuning(None, None), wait_s=0.3)


async def test_a_cycle_through_an_old_object_needs_the_full_sweep() -> None:
    young_only = _tuning(0.05, None)
    assert await _garbage_payload_outlives(young_only, wait_s=0.5, through_old=True)
    assert young_only.sweeps >= 3  # young sweeps ran, and could not free it
    full = _tuning(0.05, 0.3)
    assert not await _garbage_payload_outlives(full, wait_s=2.0, through_old=True)
    assert full.full_sweeps >= 1
