"""A result cache: identical requests to the same model version are answered once.

The key hashes everything that can change an output: the payload, the task,
the model id and version, the registry config hash (so editing a model's
preprocessing invalidates too) and the params that matter. Concurrent
identical requests share one computation (single flight). Entries live in an
in-process LRU bounded in bytes and by TTL, and optionally in Redis so that
several instances share them. Errors are never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from altlas.models.registry import ModelSpec
from altlas.schemas.types import RECORD_TYPES, ParamValue, Record

log = logging.getLogger(__name__)

#: Params that change how a request is handled but not what its answer is.
NON_SEMANTIC = frozenset({"cache", "stream", "timeout_ms", "strategy", "priority"})


def cache_key(payload: bytes | str, task: str, spec: ModelSpec, params: Mapping[str, ParamValue]) -> str:
    """Hex digest identifying one (input, model version, params) combination."""
    digest = hashlib.sha256()
    digest.update(payload.encode() if isinstance(payload, str) else payload)
    meaningful = {k: v for k, v in params.items() if k not in NON_SEMANTIC}
    header = json.dumps(
        [task, spec.id, spec.version, spec.config_hash(), meaningful], sort_keys=True, default=str
    )
    digest.update(b"\0" + header.encode())
    return digest.hexdigest()


@dataclass
class _Entry:
    value: Record
    size: int
    expires: float


class ResultCache:
    """LRU + TTL + single flight, optionally backed by Redis."""

    def __init__(
        self,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: float = 600.0,
        redis_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._size = 0
        self._inflight: dict[str, asyncio.Future[Record]] = {}
        self._redis: Any = None
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(redis_url)
        self.hits = 0
        self.misses = 0

    async def close(self) -> None:
        """Release the Redis connection pool."""
        if self._redis is not None:
            await self._redis.aclose()

    # ------------------------------------------------------------ lookups
    async def lookup(self, key: str) -> tuple[str, Record | asyncio.Future[Record] | None]:
        """("hit", value) | ("shared", future of an identical in-flight computation) | ("miss", None).

        A miss registers the caller as the one computing: it must call
        ``complete(key, value)`` or ``abandon(key)`` afterwards.
        """
        value = self._get_local(key)
        if value is None and self._redis is not None:
            value = await self._get_remote(key)
        if value is not None:
            self.hits += 1
            return "hit", value
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return "shared", pending
        self.misses += 1
        self._inflight[key] = asyncio.get_running_loop().create_future()
        return "miss", None

    async def complete(self, key: str, value: Record) -> None:
        """Store a computed output and wake up identical requests waiting for it."""
        self._put_local(key, value)
        if self._redis is not None:
            try:
                doc = json.dumps({"type": value.avro_name, "value": value.model_dump_json()})
                await self._redis.set(f"altlas:cache:{key}", doc, ex=max(1, int(self.ttl_s)))
            except Exception as exc:  # the shared tier is an optimisation, never a failure
                log.warning("redis cache write failed: %s", exc)
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(value)

    def abandon(self, key: str, error: BaseException) -> None:
        """The computation failed: identical waiters get the same error; nothing is stored."""
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # retrieved here, so an unawaited future does not warn

    # ------------------------------------------------------------ tiers
    def _get_local(self, key: str) -> Record | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires < self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def _put_local(self, key: str, value: Record) -> None:
        size = len(value.model_dump_json())
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(value, size, self._clock() + self.ttl_s)
        self._size += size
        while self._size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._size -= entry.size

    async def _get_remote(self, key: str) -> Record | None:
        try:
            raw = await self._redis.get(f"altlas:cache:{key}")
        except Exception as exc:
            log.warning("redis cache read failed: %s", exc)
            return None
        if raw is None:
            return None
        try:  # written by another instance, maybe another version: an entry that does not validate is a miss
            doc = json.loads(raw)
            cls = RECORD_TYPES.get(doc.get("type", "")) if isinstance(doc, dict) else None
            if cls is None:
                return None
            value = cls.model_validate_json(doc["value"])
        except Exception as exc:
            log.warning("ignoring an unreadable redis cache entry: %s", type(exc).__name__)
            return None
        self._put_local(key, value)
        return value
