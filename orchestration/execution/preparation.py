"""Payload decoding on threads, or in worker processes where that pays.

Decoding (image and audio containers, resampling, tokenising) is the CPU work
of a request before its model runs. It happens on a few threads, in chunks, so
a micro-batch of images decodes on every decoder thread at once while the
event loop goes on fetching and publishing (Pillow, numpy and the audio
decoders release the GIL while they work).

With ``batching.decode_processes`` set, payloads of pipelines that can decode
anywhere go to worker processes instead (decode_pool.py): the Python around
the C decoders then no longer shares the GIL with the event loop. A model
whose prepared input turns out too big to ship back cheaply (more than
``decode_process_max_item_bytes`` per payload: a 224 px float tensor is
600 KB) goes back to the threads after its first chunk, where the C decoders
already run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from altlas.orchestration.execution.preparation_pool import DecodePool, Todo, decode_timed_out, prepare_each
from altlas.pipelines.base import Prepared

log = logging.getLogger(__name__)

__all__ = ["Decoder", "Todo"]


class Decoder:
    """The decoder threads, and decoder processes if configured, of one service."""

    #: A chunk is never smaller than this (a thread hop costs more than a small payload's decode).
    MIN_CHUNK = 8
    #: Nor is a chunk sent to a process (a round trip to a worker costs about 100 µs).
    MIN_PROCESS_CHUNK = 64

    def __init__(
        self,
        threads: int,
        processes: int = 0,
        *,
        process_max_item_bytes: int = 64 * 1024,
        timeout_s: float | None = 30.0,
    ) -> None:
        self.threads = threads
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.abandoned_threads = 0  # threads left to finish a decode that ran out of time
        self.processes = DecodePool(processes, timeout_s=timeout_s) if processes > 0 else None
        self.process_max_item_bytes = process_max_item_bytes
        self._threads_only: set[str] = set()  # model keys whose inputs are too big to ship between processes
        self._local_pipelines: set[type] = set()  # pipelines that cannot be sent to a process

    async def start(self) -> None:
        """Start the decoder processes, if any, before the first request needs them."""
        if self.processes is not None:
            await asyncio.to_thread(self.processes.start)

    async def prepare_many(self, todo: Sequence[Todo]) -> list[Prepared | BaseException]:
        """Decode every payload; each failure stays in its slot."""
        if not todo:
            return []
        remote = [i for i, item in enumerate(todo) if self._in_process(item)]
        if len(remote) == len(todo):
            return await self._in_processes(todo)
        if not remote:
            return await self._on_threads(todo)
        taken = set(remote)
        local = [i for i in range(len(todo)) if i not in taken]
        there, here = await asyncio.gather(
            self._in_processes([todo[i] for i in remote]), self._on_threads([todo[i] for i in local])
        )
        # Both parts keep request order: merge them back by where each item came from.
        from_there, from_here = iter(there), iter(here)
        return [next(from_there) if i in taken else next(from_here) for i in range(len(todo))]

    async def prepare(self, item: Todo) -> Prepared:
        """Decode one payload; raises its failure."""
        (out,) = await self.prepare_many([item])
        if isinstance(out, BaseException):
            raise out
        return out

    def _in_process(self, item: Todo) -> bool:
        pipeline, _, _, spec = item
        return (
            self.processes is not None
            and getattr(pipeline, "decodes_anywhere", False)
            and spec.key not in self._threads_only
            and type(pipeline) not in self._local_pipelines
        )

    async def _on_threads(self, todo: Sequence[Todo]) -> list[Prepared | BaseException]:
        parts = _split(todo, max(1, min(self.threads, len(todo) // self.MIN_CHUNK)))
        results = await asyncio.gather(*(self._chunk_on_threads(p) for p in parts))
        return [item for part in results for item in part]

    async def prepare_together(self, todo: Sequence[Todo]) -> list[Prepared | BaseException]:
        """One payload for several models (an ensemble's members), its container decoded once for all
        of them (pipelines/decode_once.py), on one thread, with the same time limit as any chunk."""
        return await self._chunk_on_threads(todo, together=True)

    async def _chunk_on_threads(
        self, todo: Sequence[Todo], together: bool = False
    ) -> list[Prepared | BaseException]:
        """A chunk on one thread, within the time limit, counted from when a thread starts it.

        Chunks queue in the pool, so its threads never wait for the event loop to
        hand them work. A thread cannot be stopped, so one that overruns is left to
        finish on its own and the pool replaced: the payload it was decoding is
        answered DECODE_TIMED_OUT and the ones after it are decoded again (unless
        they are the same payload); chunks queued behind it move to the new pool
        at once, so none runs out of time without having started.
        """
        chunk = _Chunk(todo, together, self._pool)
        try:
            in_time = await self._finished_in_time(chunk)
        except asyncio.CancelledError:
            chunk.cancel()  # still queued: it never runs
            raise
        if in_time:
            return chunk.result()
        finished = list(chunk.done)  # the abandoned thread may still append: take what was there
        if len(finished) >= len(todo):
            return finished
        self._abandon()
        if together:  # the rest is the same payload: decoding it again would overrun again
            return [*finished, *(decode_timed_out(self.timeout_s) for _ in todo[len(finished) :])]
        stuck = todo[len(finished)]
        log.warning(
            "a %s payload for %s took over %.0fs to decode; abandoned",
            stuck[0].task,
            stuck[3].key,
            self.timeout_s,
        )
        rest = await self._on_threads(todo[len(finished) + 1 :]) if len(finished) + 1 < len(todo) else []
        return [*finished, decode_timed_out(self.timeout_s), *rest]

    async def _finished_in_time(self, chunk: _Chunk) -> bool:
        """Wait for ``chunk``; False once a thread has had it for longer than the time limit."""
        while True:
            left = None if self.timeout_s is None else chunk.time_left(self.timeout_s)
            done, _ = await asyncio.wait({chunk.waiter}, timeout=left)
            if done and chunk.moved_from(self._pool):  # was queued in a pool given up: run it here
                chunk.submit(self._pool)
            elif done:
                return True
            elif chunk.started and chunk.time_left(self.timeout_s or 0.0) <= 0:
                return False

    def _abandon(self) -> None:
        """Leave an overrunning thread to finish alone, with a fresh pool for the chunks to come."""
        self.abandoned_threads += 1
        old, self._pool = (
            self._pool,
            ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode"),
        )
        old.shutdown(wait=False, cancel_futures=True)  # what waited there moves to the new pool

    async def _in_processes(self, todo: Sequence[Todo]) -> list[Prepared | BaseException]:
        """Two chunks per worker: one is shipped while the other decodes."""
        pool = self.processes
        assert pool is not None
        parts = _split(todo, max(1, min(2 * pool.processes, len(todo) // self.MIN_PROCESS_CHUNK)))
        try:
            results = await asyncio.gather(*(pool.decode(p) for p in parts))
        except Exception as exc:  # e.g. a pipeline that does not pickle: never fail the batch for it
            self._keep_local(todo, exc)
            return await self.prepare_many(todo)
        for _, sizes in results:
            for key, size in sizes.items():
                if size > self.process_max_item_bytes and key not in self._threads_only:
                    self._threads_only.add(key)
                    log.info(
                        "%s decodes on threads from now on: its inputs (%d KiB) cost more to ship "
                        "back from a process than decoding them there saves",
                        key,
                        size // 1024,
                    )
        return [item for part, _ in results for item in part]

    def _keep_local(self, todo: Sequence[Todo], exc: Exception) -> None:
        """After a failure to use the processes: the pipelines that do not pickle, else these models."""
        pipelines = {id(pipeline): pipeline for pipeline, _, _, _ in todo}.values()
        bad = {type(p) for p in pipelines if not _pickles(p)}
        if bad:
            self._local_pipelines |= bad
            what = ", ".join(sorted(t.__name__ for t in bad))
        else:
            keys = {spec.key for _, _, _, spec in todo}
            self._threads_only |= keys
            what = ", ".join(sorted(keys))
        log.warning("%s decode on threads from now on: decoder processes failed (%r)", what, exc)

    def shutdown(self) -> None:
        """Stop the threads and processes; decodes not started are dropped (their batch is abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown()


class _Chunk:
    """Payloads prepared on one decode thread: when the thread took them, and the pool they wait in."""

    def __init__(self, todo: Sequence[Todo], together: bool, pool: ThreadPoolExecutor) -> None:
        self.todo, self.together = todo, together
        self.done: list[Prepared | BaseException] = []  # filled as it goes, on the thread
        self.started: float | None = None  # time.monotonic() when a thread took it
        self.pool = pool
        self.work: Future[list[Prepared | BaseException]] = pool.submit(self._run)
        self.waiter = asyncio.wrap_future(self.work)

    def submit(self, pool: ThreadPoolExecutor) -> None:
        """Queue again, on ``pool``."""
        self.pool, self.work = pool, pool.submit(self._run)
        self.waiter = asyncio.wrap_future(self.work)

    def _run(self) -> list[Prepared | BaseException]:
        self.started = time.monotonic()
        return prepare_each(self.todo, self.done, self.together)

    def time_left(self, limit: float) -> float:
        """Seconds before it overruns ``limit``: all of it while no thread has started it."""
        return limit if self.started is None else self.started + limit - time.monotonic()

    def moved_from(self, current: ThreadPoolExecutor) -> bool:
        """Whether it was dropped unstarted from a pool that is no longer ``current``."""
        return self.pool is not current and self.work.cancelled()

    def cancel(self) -> None:
        """Drop it if no thread has started it."""
        self.work.cancel()

    def result(self) -> list[Prepared | BaseException]:
        """What the thread returned (asyncio's CancelledError when the decoder was shut down first)."""
        return self.waiter.result()


def _split(todo: Sequence[Todo], chunks: int) -> list[Sequence[Todo]]:
    size = -(-len(todo) // chunks)
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _pickles(obj: object) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True
