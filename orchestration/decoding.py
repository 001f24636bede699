"""Payload decoding on threads.

Decoding (image and audio containers, resampling, tokenising) is the CPU work
of a request before its model runs. It happens on a few threads, in chunks, so
a micro-batch of images decodes on every decoder thread at once while the
event loop goes on fetching and publishing (Pillow, numpy and the audio
decoders release the GIL while they work).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from altlas.models.registry import ModelSpec
from altlas.pipelines.base import Pipeline, Prepared
from altlas.schemas.types import ParamValue

#: One payload to decode: the pipeline that decodes it, its bytes, params and model.
Todo = tuple[Pipeline, bytes | str, Mapping[str, ParamValue], ModelSpec]


class Decoder:
    """The decoder threads of one process."""

    #: A chunk is never smaller than this (a thread hop costs more than a small payload's decode).
    MIN_CHUNK = 8

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    async def prepare_many(self, todo: Sequence[Todo]) -> list[Prepared | BaseException]:
        """Decode every payload; each failure stays in its slot."""
        if not todo:
            return []
        loop = asyncio.get_running_loop()
        chunks = max(1, min(self.threads, len(todo) // self.MIN_CHUNK))
        size = -(-len(todo) // chunks)
        parts = [todo[i : i + size] for i in range(0, len(todo), size)]
        results = await asyncio.gather(*(loop.run_in_executor(self._pool, self._chunk, p) for p in parts))
        return [item for part in results for item in part]

    async def prepare(self, item: Todo) -> Prepared:
        """Decode one payload; raises its failure."""
        out = (await asyncio.get_running_loop().run_in_executor(self._pool, self._chunk, [item]))[0]
        if isinstance(out, BaseException):
            raise out
        return out

    @staticmethod
    def _chunk(todo: Sequence[Todo]) -> list[Prepared | BaseException]:
        out: list[Prepared | BaseException] = []
        for pipeline, payload, params, spec in todo:
            try:
                out.append(pipeline.prepare(payload, params, spec))
            except Exception as exc:
                out.append(exc)
        return out

    def shutdown(self) -> None:
        """Stop the threads; decodes not started are dropped (their batch is abandoned anyway)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
