"""Bringing a model into memory and taking it out again, within a memory budget.

The manager decides when a model must be loaded and when it may go (per-model locks, use counts,
leak restarts); this owns how: whether a model fits the budget, which idle model to evict when it
does not (or how long to wait for one to become idle), running the runtime's slow load and unload
off the event loop, and reporting every change as a ``ModelEvent``. It is apart from the manager
because it is the slow, fallible path, while the manager's per-batch path must stay short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from altlas.models.errors import ModelBudgetError, ModelError, ModelLoadError
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime, create_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEvent:
    """A change of one model's state in this process."""

    model_id: str
    model_version: str
    state: str  # a ModelState value: loading, ready, unloaded, evicted, failed
    memory_bytes: int = 0
    load_ms: float | None = None
    message: str = ""
    command_id: str | None = None


@dataclass
class ModelSlot:
    """One model's record, shared by the manager (use, leaks, locking) and ``Residency`` (memory)."""

    spec: ModelSpec
    runtime: ModelRuntime | None = None
    state: str = "unloaded"
    in_use: int = 0
    last_used: float = 0.0
    memory: int = 0
    load_ms: float | None = None
    message: str = ""
    growth: int = 0  # resident memory gained during this model's batches since it loaded
    batches: int = 0
    restart_reason: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def estimate_bytes(spec: ModelSpec) -> int:
    """Memory a model will take, before loading it: declared, else its files' size."""
    if spec.metadata.memory_mb is not None:
        return int(spec.metadata.memory_mb * 1024 * 1024)
    path = spec.path
    if path is None or not path.exists():
        return 0
    if path.is_dir():
        return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    return path.stat().st_size


class Residency:
    """The manager's models' way into memory and out, so that they never hold more than the budget.

    The caller holds the slot's lock around ``load`` and ``drop``, which is what makes one load per
    model however many batches ask; eviction takes the victim's, so no model is dropped under a load,
    an unload or a restart of it in progress.
    """

    def __init__(
        self,
        slots: dict[str, ModelSlot],
        released: asyncio.Condition,
        *,
        memory_budget_bytes: int | None = None,
        listener: Callable[[ModelEvent], None] | None = None,
        runtime_factory: Callable[[ModelSpec], ModelRuntime] = create_runtime,
        loader: Executor | None = None,
        pinned: Callable[[str], bool] | None = None,
        wait_for_room_s: float = 30.0,
        eviction: str = "cost",
    ) -> None:
        if eviction not in ("cost", "lru"):
            raise ValueError(f"eviction policy must be cost or lru, got {eviction!r}")
        self.memory_budget = memory_budget_bytes
        self.eviction = eviction
        self._slots = slots  # the manager's: shared, so what is loaded is known in one place
        self._released = released  # notified by the manager whenever a model's last batch ends
        self._listener = listener
        self._factory = runtime_factory
        self._loader = loader or ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-load")
        self._pinned = pinned or (lambda key: False)
        self._wait_for_room_s = wait_for_room_s

    @property
    def memory_used(self) -> int:
        """Bytes held by loaded models (by the manager's estimate)."""
        return sum(e.memory for e in self._slots.values() if e.runtime is not None)

    async def load(self, entry: ModelSlot, *, command_id: str | None) -> ModelRuntime:
        """Make room for the model and load it; on failure it is reported ``failed`` and raised."""
        needed = estimate_bytes(entry.spec)
        await self._make_room(needed, entry)
        entry.state = "loading"
        self._emit(entry, "loading", command_id=command_id)
        runtime = self._factory(entry.spec)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._loader, runtime.load)
        except Exception as exc:
            entry.state = "failed"
            entry.message = str(exc)
            self._emit(entry, "failed", command_id=command_id, message=str(exc))
            if isinstance(exc, ModelError):
                raise
            raise ModelLoadError(f"{entry.spec.key}: {exc}") from exc
        entry.load_ms = (time.perf_counter() - started) * 1000
        entry.growth = entry.batches = 0
        entry.memory = max(runtime.memory_bytes(), needed)
        entry.runtime = runtime
        entry.state = "ready"
        entry.message = ""
        entry.last_used = time.monotonic()
        self._emit(entry, "ready", command_id=command_id)
        return runtime

    async def drop(self, entry: ModelSlot, reason: str, *, command_id: str | None) -> None:
        """Unload the model's runtime (if any) and leave it in state ``reason``."""
        runtime, entry.runtime = entry.runtime, None
        memory, entry.memory = entry.memory, 0
        if runtime is not None:
            await asyncio.get_running_loop().run_in_executor(self._loader, runtime.unload)
        entry.state = reason
        log.info("model %s %s", entry.spec.key, reason, extra={"freed_bytes": memory})
        self._emit(entry, reason, command_id=command_id, memory=0)

    async def _make_room(self, needed: int, for_entry: ModelSlot) -> None:
        budget = self.memory_budget
        if budget is None:
            return
        if needed > budget:
            raise ModelBudgetError(
                f"{for_entry.spec.key} needs ~{needed >> 20} MiB, "
                f"more than the whole budget of {budget >> 20} MiB"
            )
        deadline = time.monotonic() + self._wait_for_room_s
        while self.memory_used + needed > budget:
            victim = self._eviction_candidate(exclude=for_entry)
            if victim is not None:
                async with victim.lock:
                    if victim.runtime is not None and victim.in_use == 0:
                        await self.drop(victim, "evicted", command_id=None)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelBudgetError(
                    f"{for_entry.spec.key} needs ~{needed >> 20} MiB; the budget is held by models in use"
                )
            async with self._released:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), remaining)

    def _eviction_candidate(self, exclude: ModelSlot) -> ModelSlot | None:
        """The idle, unpinned model to evict: cheapest to reload first (policy ``cost``), or LRU."""
        idle = [
            e
            for e in self._slots.values()
            if e is not exclude and e.runtime is not None and e.in_use == 0 and not self._pinned(e.spec.key)
        ]
        if self.eviction == "lru":
            return min(idle, key=lambda e: e.last_used, default=None)
        return min(idle, key=lambda e: (self.reload_cost_ms(e.spec), e.last_used), default=None)

    def reload_cost_ms(self, spec: ModelSpec) -> float:
        """What reloading a model would cost: declared, else measured, else guessed from its size."""
        if spec.metadata.load_ms is not None:
            return spec.metadata.load_ms
        entry = self._slots.get(spec.key)
        if entry is not None and entry.load_ms is not None:
            return entry.load_ms
        return estimate_bytes(spec) / (200 * 1024 * 1024) * 1000  # ~200 MB/s from page cache

    def event(
        self,
        entry: ModelSlot,
        state: str,
        *,
        command_id: str | None = None,
        message: str | None = None,
        memory: int | None = None,
    ) -> ModelEvent:
        """The model's state as reported to the listener and to callers of the manager."""
        return ModelEvent(
            model_id=entry.spec.id,
            model_version=entry.spec.version,
            state=state,
            memory_bytes=entry.memory if memory is None else memory,
            load_ms=entry.load_ms,
            message=entry.message if message is None else message,
            command_id=command_id,
        )

    def _emit(self, entry: ModelSlot, state: str, **kwargs: object) -> None:
        event = self.event(entry, state, **kwargs)  # type: ignore[arg-type]
        if self._listener is not None:
            try:
                self._listener(event)
            except Exception:  # a broken listener must not break model loading
                log.exception("model event listener failed")
