"""CPython's cyclic garbage collector, tuned for a process that allocates per request.

The collector runs whenever container allocations outnumber deallocations by
700 (CPython's default threshold) and walks every young object each time; a
full run walks the whole heap. A micro-batch keeps thousands of short-lived
objects alive at once (records, requests, futures, result dicts), so on a small
model the collector ran about 2,800 times while altlas drained a 40,000-request
backlog and cost a quarter of its throughput (bench/peers.py, tiny model: 4,334
-4,789 req/s with Python's defaults, 5,418-6,636 with this). Nearly all of those
objects are freed by reference counting the moment they die; the collector is
only needed for cycles.

So ``altlas run``:

- raises the first threshold (``process.gc_threshold``), so the collector runs
  when garbage accumulates, not with every batch;
- freezes what is alive before the first model loads (modules, schemas,
  settings: objects that live as long as the process), so no collection walks
  them again (``gc.freeze``, the Instagram recipe). Models are not frozen: an
  unloaded or evicted model must stay collectable, and a frozen cycle never is;
- collects the young generations every ``process.gc_sweep_s`` seconds, so
  cyclic garbage (a failed request's traceback still holding its payload) is
  freed within that time however few allocations follow it. That walks only
  what was allocated since the sweep before last;
- runs a full collection every ``process.gc_full_sweep_s`` seconds, for the
  cycles that reach into objects already promoted to the oldest generation (a
  request that failed after seconds of generation). A full collection walks
  every object not frozen, the result cache and the loaded models among them,
  which is why it is rare.

The collector is process-wide: only ``altlas run`` tunes it, and an application
that embeds the Orchestrator keeps its own settings.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math

from altlas.orchestration.app.settings import ProcessSettings

log = logging.getLogger(__name__)


class GcTuning:
    """Applies ProcessSettings to the collector between ``apply`` and ``restore``."""

    def __init__(self, settings: ProcessSettings) -> None:
        self.settings = settings
        self.sweeps = 0  # young collections the sweeper ran
        self.full_sweeps = 0
        self._previous: tuple[int, int, int] | None = None
        self._frozen = False

    def apply(self) -> None:
        """Raise the threshold and freeze what exists; call before any model loads."""
        s = self.settings
        self._previous = gc.get_threshold()
        if s.gc_threshold is not None:
            gc.set_threshold(s.gc_threshold, *self._previous[1:])
        if s.gc_freeze:
            gc.collect()  # what is garbage now must not be frozen with the rest
            gc.freeze()
            self._frozen = True
            log.info("garbage collector: %d objects frozen", gc.get_freeze_count())

    async def sweep(self) -> None:
        """Young collections every ``gc_sweep_s``, full ones every ``gc_full_sweep_s``, until cancelled."""
        young, full = self.settings.gc_sweep_s, self.settings.gc_full_sweep_s
        if young is None and full is None:
            return
        period = min(p for p in (young, full) if p is not None)
        loop = asyncio.get_running_loop()
        next_full = loop.time() + (full if full is not None else math.inf)
        while True:
            await asyncio.sleep(period)
            if full is not None and loop.time() >= next_full:
                gc.collect()
                self.full_sweeps += 1
                next_full = loop.time() + full
            elif young is not None:
                gc.collect(1)
                self.sweeps += 1

    def restore(self) -> None:
        """Python's collector as it was before ``apply``."""
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            self._previous = None
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
