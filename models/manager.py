"""Model residency: lazy loading, explicit load/unload, and eviction under a memory budget.

Loading is slow and memory is finite, so the manager owns every loaded model:
one load per model even when many batches ask at once, a reference count while
batches run (a model in use is never unloaded under them), and least-recently
used eviction of idle models when a new one would not fit the budget. Every
change is reported as a ``ModelEvent``; orchestration publishes them. How a
model fits, which one is evicted, and the loading itself are ``Residency``'s
(``models/residency.py``); the manager decides when, and keeps what every batch
touches (use counts, leak charges) here, in one module.

It also watches for leaks. A runtime cannot report memory it leaks, so the
manager measures the process's resident memory around every batch and charges
the growth to the model that ran it. A model whose charge passes its allowance
(``metadata.max_growth_mb``, else the manager's default) is restarted: marked
``failed`` with the reason, unloaded once its batches finish, and loaded afresh
on next use. Concurrent batches of other models blur the attribution, so the
allowance is generous by default; memory a model needs for a larger input than
before is charged once, a leak without end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager, suppress

import psutil

from altlas.models.errors import ModelError
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.models.residency import ModelEvent as ModelEvent
from altlas.models.residency import ModelSlot, Residency
from altlas.models.runtime import ModelRuntime, create_runtime

log = logging.getLogger(__name__)


class ModelManager:
    """Loads, shares, unloads and evicts the models of one registry."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        memory_budget_bytes: int | None = None,
        listener: Callable[[ModelEvent], None] | None = None,
        runtime_factory: Callable[[ModelSpec], ModelRuntime] = create_runtime,
        loader: Executor | None = None,
        pinned: Callable[[str], bool] | None = None,
        wait_for_room_s: float = 30.0,
        eviction: str = "cost",
        max_growth_bytes: int | None = None,
    ) -> None:
        self.registry = registry
        self.max_growth = max_growth_bytes
        self._process = psutil.Process()
        self._entries: dict[str, ModelSlot] = {}
        self._released = asyncio.Condition()
        self._residency = Residency(
            self._entries,
            self._released,
            memory_budget_bytes=memory_budget_bytes,
            listener=listener,
            runtime_factory=runtime_factory,
            loader=loader,
            pinned=pinned,
            wait_for_room_s=wait_for_room_s,
            eviction=eviction,
        )

    # ------------------------------------------------------------ queries
    def _entry(self, spec: ModelSpec) -> ModelSlot:
        entry = self._entries.get(spec.key)
        if entry is None:
            entry = self._entries[spec.key] = ModelSlot(spec)
        return entry

    @property
    def memory_budget(self) -> int | None:
        """Bytes the loaded models may hold together (None: no limit)."""
        return self._residency.memory_budget

    @property
    def eviction(self) -> str:
        """Which idle model goes first when room is needed: ``cost`` (cheapest reload) or ``lru``."""
        return self._residency.eviction

    @property
    def memory_used(self) -> int:
        """Bytes held by loaded models (by the manager's estimate)."""
        return self._residency.memory_used

    def reload_cost_ms(self, spec: ModelSpec) -> float:
        """What reloading a model would cost: declared, else measured, else guessed from its size."""
        return self._residency.reload_cost_ms(spec)

    def status(self, ref: str) -> ModelEvent:
        """Current state of a model, as an event (``unloaded`` if never loaded)."""
        spec = self.registry.get(ref)
        return self._residency.event(self._entry(spec), self._entry(spec).state)

    def loaded(self) -> list[str]:
        """Keys of the models loaded now."""
        return [k for k, e in self._entries.items() if e.runtime is not None]

    def batches_since_load(self, spec: ModelSpec) -> int:
        """Batches the model finished since it was last loaded (its first one is usually a warm-up)."""
        entry = self._entries.get(spec.key)
        return entry.batches if entry is not None else 0

    def is_loaded(self, ref: str) -> bool:
        """Whether a model is loaded and ready (``ref`` is usually a key: checked per request)."""
        entry = self._entries.get(ref) or self._entries.get(self.registry.get(ref).key)
        return entry is not None and entry.runtime is not None

    # ------------------------------------------------------------ use
    @asynccontextmanager
    async def use(self, spec: ModelSpec) -> AsyncIterator[ModelRuntime]:
        """The ready runtime of ``spec``, loaded if needed; not evictable while held."""
        entry = self._entry(spec)
        runtime = await self._ensure_loaded(entry, command_id=None)
        # Counted once it holds the runtime, not while it waits for a load: an unload or a restart
        # holds the model's lock until the count is zero, so a request counted while queued on that
        # lock would wait for itself, and every later request of the model behind it.
        entry.in_use += 1
        try:
            entry.last_used = time.monotonic()
            before = self._rss()
            yield runtime
            self._charge(entry, self._rss() - before)
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.in_use == 0:
                async with self._released:
                    self._released.notify_all()
        if entry.restart_reason is not None:
            await self._restart(entry)

    async def load(self, ref: str, *, command_id: str | None = None) -> ModelEvent:
        """Load now (no-op if loaded); returns the resulting state."""
        entry = self._entry(self.registry.get(ref))
        # On failure the failed event was emitted; the caller gets the state back below.
        with suppress(ModelError):
            await self._ensure_loaded(entry, command_id=command_id)
        return self._residency.event(entry, entry.state, command_id=command_id)

    async def unload(
        self, ref: str, *, command_id: str | None = None, reason: str = "unloaded"
    ) -> ModelEvent:
        """Unload once no batch holds the model; ``reason`` is unloaded or evicted."""
        entry = self._entry(self.registry.get(ref))
        async with entry.lock:
            await self._wait_idle(entry)
            await self._residency.drop(entry, reason, command_id=command_id)
        return self._residency.event(entry, entry.state, command_id=command_id)

    async def close(self) -> None:
        """Unload everything (at shutdown)."""
        for entry in list(self._entries.values()):
            if entry.runtime is not None:
                async with entry.lock:
                    await self._residency.drop(entry, "unloaded", command_id=None)

    # ------------------------------------------------------------ leaks
    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _charge(self, entry: ModelSlot, delta: int) -> None:
        """Charge one batch's memory growth to its model; past the allowance, schedule a restart."""
        entry.growth += delta
        entry.batches += 1
        declared = entry.spec.metadata.max_growth_mb
        limit = int(declared * 1024 * 1024) if declared is not None else self.max_growth
        if limit is None or entry.growth <= limit or entry.restart_reason is not None:
            return
        entry.restart_reason = (
            f"leaking memory: grew {entry.growth >> 20} MiB over {entry.batches} batches since it "
            f"loaded (allowed {limit >> 20} MiB); restarted"
        )
        log.warning("model %s %s", entry.spec.key, entry.restart_reason)

    async def _restart(self, entry: ModelSlot) -> None:
        """Unload a leaking model once idle, reporting it failed; the next use loads it afresh."""
        async with entry.lock:
            reason, entry.restart_reason = entry.restart_reason, None
            if reason is None or entry.runtime is None:
                return
            await self._wait_idle(entry)
            entry.message = reason
            await self._residency.drop(entry, "failed", command_id=None)

    # ------------------------------------------------------------ internals
    async def _ensure_loaded(self, entry: ModelSlot, *, command_id: str | None) -> ModelRuntime:
        """The loaded runtime; the check that it is loaded stays here, on every batch's path."""
        if entry.runtime is not None:
            return entry.runtime
        async with entry.lock:  # one load per model, however many batches ask at once
            if entry.runtime is not None:
                return entry.runtime
            return await self._residency.load(entry, command_id=command_id)

    async def _wait_idle(self, entry: ModelSlot) -> None:
        async with self._released:
            await self._released.wait_for(lambda: entry.in_use == 0)
