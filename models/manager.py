"""Model residency: lazy loading, explicit load/unload, and eviction under a memory budget.

Loading is slow and memory is finite, so the manager owns every loaded model:
one load per model even when many batches ask at once, a reference count while
batches run (a model in use is never unloaded under them), and least-recently
used eviction of idle models when a new one would not fit the budget. Every
change is reported as a ``ModelEvent``; orchestration publishes them.

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
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from altlas.models.errors import ModelBudgetError, ModelError, ModelLoadError
from altlas.models.registry import ModelRegistry, ModelSpec
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
class _Entry:
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
        self.memory_budget = memory_budget_bytes
        self._listener = listener
        self._factory = runtime_factory
        self._loader = loader or ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-load")
        self._pinned = pinned or (lambda key: False)
        self._wait_for_room_s = wait_for_room_s
        if eviction not in ("cost", "lru"):
            raise ValueError(f"eviction policy must be cost or lru, got {eviction!r}")
        self.eviction = eviction
        self.max_growth = max_growth_bytes
        self._process = psutil.Process()
        self._entries: dict[str, _Entry] = {}
        self._released = asyncio.Condition()

    # ------------------------------------------------------------ queries
    def _entry(self, spec: ModelSpec) -> _Entry:
        entry = self._entries.get(spec.key)
        if entry is None:
            entry = self._entries[spec.key] = _Entry(spec)
        return entry

    @property
    def memory_used(self) -> int:
        """Bytes held by loaded models (by the manager's estimate)."""
        return sum(e.memory for e in self._entries.values() if e.runtime is not None)

    def status(self, ref: str) -> ModelEvent:
        """Current state of a model, as an event (``unloaded`` if never loaded)."""
        spec = self.registry.get(ref)
        return self._event(self._entry(spec), self._entry(spec).state)

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
        entry.in_use += 1
        try:
            runtime = await self._ensure_loaded(entry, command_id=None)
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
        return self._event(entry, entry.state, command_id=command_id)

    async def unload(
        self, ref: str, *, command_id: str | None = None, reason: str = "unloaded"
    ) -> ModelEvent:
        """Unload once no batch holds the model; ``reason`` is unloaded or evicted."""
        entry = self._entry(self.registry.get(ref))
        async with entry.lock:
            await self._wait_idle(entry)
            await self._drop(entry, reason, command_id=command_id)
        return self._event(entry, entry.state, command_id=command_id)

    async def close(self) -> None:
        """Unload everything (at shutdown)."""
        for entry in list(self._entries.values()):
            if entry.runtime is not None:
                async with entry.lock:
                    await self._drop(entry, "unloaded", command_id=None)

    # ------------------------------------------------------------ leaks
    def _rss(self) -> int:
        return int(self._process.memory_info().rss)

    def _charge(self, entry: _Entry, delta: int) -> None:
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

    async def _restart(self, entry: _Entry) -> None:
        """Unload a leaking model once idle, reporting it failed; the next use loads it afresh."""
        async with entry.lock:
            reason, entry.restart_reason = entry.restart_reason, None
            if reason is None or entry.runtime is None:
                return
            await self._wait_idle(entry)
            entry.message = reason
            await self._drop(entry, "failed", command_id=None)

    # ------------------------------------------------------------ internals
    async def _ensure_loaded(self, entry: _Entry, *, command_id: str | None) -> ModelRuntime:
        if entry.runtime is not None:
            return entry.runtime
        async with entry.lock:
            if entry.runtime is not None:
                return entry.runtime
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

    async def _make_room(self, needed: int, for_entry: _Entry) -> None:
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
                        await self._drop(victim, "evicted", command_id=None)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelBudgetError(
                    f"{for_entry.spec.key} needs ~{needed >> 20} MiB; the budget is held by models in use"
                )
            async with self._released:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), remaining)

    def _eviction_candidate(self, exclude: _Entry) -> _Entry | None:
        """The idle, unpinned model to evict: cheapest to reload first (policy ``cost``), or LRU."""
        idle = [
            e
            for e in self._entries.values()
            if e is not exclude and e.runtime is not None and e.in_use == 0 and not self._pinned(e.spec.key)
        ]
        if self.eviction == "lru":
            return min(idle, key=lambda e: e.last_used, default=None)
        return min(idle, key=lambda e: (self.reload_cost_ms(e.spec), e.last_used), default=None)

    def reload_cost_ms(self, spec: ModelSpec) -> float:
        """What reloading a model would cost: declared, else measured, else guessed from its size."""
        if spec.metadata.load_ms is not None:
            return spec.metadata.load_ms
        entry = self._entries.get(spec.key)
        if entry is not None and entry.load_ms is not None:
            return entry.load_ms
        return estimate_bytes(spec) / (200 * 1024 * 1024) * 1000  # ~200 MB/s from page cache

    async def _wait_idle(self, entry: _Entry) -> None:
        async with self._released:
            await self._released.wait_for(lambda: entry.in_use == 0)

    async def _drop(self, entry: _Entry, reason: str, *, command_id: str | None) -> None:
        runtime, entry.runtime = entry.runtime, None
        memory, entry.memory = entry.memory, 0
        if runtime is not None:
            await asyncio.get_running_loop().run_in_executor(self._loader, runtime.unload)
        entry.state = reason
        log.info("model %s %s", entry.spec.key, reason, extra={"freed_bytes": memory})
        self._emit(entry, reason, command_id=command_id, memory=0)

    def _event(
        self,
        entry: _Entry,
        state: str,
        *,
        command_id: str | None = None,
        message: str | None = None,
        memory: int | None = None,
    ) -> ModelEvent:
        return ModelEvent(
            model_id=entry.spec.id,
            model_version=entry.spec.version,
            state=state,
            memory_bytes=entry.memory if memory is None else memory,
            load_ms=entry.load_ms,
            message=entry.message if message is None else message,
            command_id=command_id,
        )

    def _emit(self, entry: _Entry, state: str, **kwargs: object) -> None:
        event = self._event(entry, state, **kwargs)  # type: ignore[arg-type]
        if self._listener is not None:
            try:
                self._listener(event)
            except Exception:  # a broken listener must not break model loading
                log.exception("model event listener failed")
