"""Payload decoding in worker processes, for decodes that hold the GIL.

Pillow's and the audio decoders' C code releases the GIL, but what surrounds
it does not: opening the container, parsing its headers and chunks, building
the image object, a few numpy calls. On a small image that is nearly all of
the decode (about 30 µs of Python for a 4x4 PNG), and on the decoder threads
it competes with the event loop for the one GIL, so a busy service cannot use
a second core. Worker processes take that Python elsewhere.

Everything a worker returns is pickled and copied back, so processes pay only
while the prepared input is small; the Decoder learns each model's input size
from what comes back and keeps big ones on threads. A decoder that crashes on
a payload (a segfault in a codec) takes down a worker, not the service: the
pool is replaced and the payloads of the failed chunk are tried one at a
time, so only the one that crashes again is answered with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import signal
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from altlas.models.registry import ModelSpec
from altlas.pipelines.base import Pipeline, Prepared
from altlas.pipelines.decode_once import decoded_once
from altlas.schemas.errors import AltlasError, ErrorCode, InvalidRequestError
from altlas.schemas.types import ParamValue

log = logging.getLogger(__name__)

#: One payload to decode: the pipeline that decodes it, its bytes, params and model.
Todo = tuple[Pipeline, bytes | str, Mapping[str, ParamValue], ModelSpec]
#: What a chunk decodes to: one Prepared or error per payload, and the largest input per model key.
Decoded = tuple[list[Prepared | BaseException], dict[str, int]]


class DecodePool:
    """A pool of decoder processes, replaced when one of them dies."""

    def __init__(self, processes: int, *, timeout_s: float | None = None) -> None:
        self.processes = processes
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._generation = 0  # bumped per replacement: a failure replaces only the pool it saw
        self._guarding: asyncio.Lock | None = None
        self.crashes = 0  # worker processes that died

    def start(self) -> None:
        """Start every worker now (blocking, about a second): a request should not wait for one."""
        if self._pool is None:
            self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # forkserver, not fork: the service has Kafka, ONNX Runtime and decoder threads running.
        pool = ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("forkserver"), initializer=_init_worker
        )
        for future in [pool.submit(_ready) for _ in range(self.processes)]:
            future.result()
        return pool

    async def decode(self, todo: Sequence[Todo]) -> Decoded:
        """Decode a chunk in one worker; a crash costs only the payload that causes it."""
        guard = self._guard()
        if self._pool is None or guard.locked():
            # Starting, or isolating a crash: nothing else may share the pool it tests payloads in.
            async with guard:
                if self._pool is None:
                    await asyncio.to_thread(self.start)
        pool, generation = self._pool, self._generation
        assert pool is not None
        try:
            packed = await self._run(pool, list(todo))
        except BrokenProcessPool:
            return await self._isolate(todo, generation)
        return _unpack(packed)

    async def _run(self, pool: ProcessPoolExecutor, todo: list[Todo]) -> tuple[Any, ...]:
        """One chunk in one worker; past the time limit the workers are killed (BrokenProcessPool)."""
        future = pool.submit(_decode_chunk, todo)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            for process in list(getattr(pool, "_processes", {}).values()):  # no public way to stop one
                process.kill()
            raise BrokenProcessPool("a decode ran past the time limit") from None

    def _guard(self) -> asyncio.Lock:
        if self._guarding is None:  # created on first use, in the event loop that decodes
            self._guarding = asyncio.Lock()
        return self._guarding

    async def _isolate(self, todo: Sequence[Todo], generation: int) -> Decoded:
        """After a crash: a fresh pool, then each payload alone, so the crash finds its culprit."""
        async with self._guard():
            broken = generation == self._generation  # else another chunk has replaced that pool already
            if broken:
                self.crashes += 1
            log.warning("a decoder process died; retrying %d payloads one at a time", len(todo))
            out: list[Prepared | BaseException] = []
            sizes: dict[str, int] = {}
            for item in todo:
                if broken:
                    await asyncio.to_thread(self._replace)
                    broken = False
                assert self._pool is not None
                try:
                    packed = await self._run(self._pool, [item])
                except BrokenProcessPool as exc:
                    self.crashes += 1
                    broken = True
                    timed_out = "time limit" in str(exc)
                    log.warning(
                        "the decoder %s on a %s payload of %s",
                        "ran out of time" if timed_out else "crashed", item[0].task, item[3].key,
                    )  # fmt: skip
                    out.append(
                        decode_timed_out(self.timeout_s)
                        if timed_out
                        else InvalidRequestError(
                            "the payload crashed its decoder", code=ErrorCode.INVALID_PAYLOAD
                        )
                    )
                    continue
                prepared, item_sizes = _unpack(packed)
                out += prepared
                for key, size in item_sizes.items():
                    sizes[key] = max(sizes.get(key, 0), size)
            return out, sizes

    def _replace(self) -> None:
        old, self._pool = self._pool, None
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self._generation += 1

    def shutdown(self) -> None:
        """Stop the workers; decodes not started are dropped (their batch is abandoned anyway)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# ---------------------------------------------------------------- in the worker


def decode_timed_out(seconds: float | None) -> AltlasError:
    """The error of a payload whose decode ran past the time limit."""
    return AltlasError(f"decoding the payload took over {seconds:.0f}s", code=ErrorCode.DECODE_TIMED_OUT)


def _init_worker() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the service stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import altlas.pipelines.image  # noqa: F401  (Pillow and numpy, before the first chunk)


def _ready() -> bool:
    return True


def prepare_each(
    todo: Sequence[Todo], out: list[Prepared | BaseException] | None = None, together: bool = False
) -> list[Prepared | BaseException]:
    """Prepare each payload; a failure stays in its slot (on the decoder threads and in the workers).

    ``out`` fills as it goes, so a caller whose time ran out knows which payload was being decoded.
    ``together``: the items share their payload (an ensemble's members), decoded once for all of them.
    """
    out = [] if out is None else out
    with decoded_once() if together else contextlib.nullcontext():
        for pipeline, payload, params, spec in todo:
            try:
                out.append(pipeline.prepare(payload, params, spec))
            except Exception as exc:
                out.append(exc)
    return out


def _decode_chunk(todo: list[Todo]) -> tuple[Any, ...]:
    """``prepare_each`` in a worker: failures must survive pickling, and sizes travel back too."""
    out = prepare_each(todo)
    sizes: dict[str, int] = {}
    for n, (item, (_, _, _, spec)) in enumerate(zip(out, todo, strict=True)):
        if isinstance(item, BaseException):
            out[n] = _portable(item)
        else:
            sizes[spec.key] = max(sizes.get(spec.key, 0), _nbytes(item.data))
    return _pack(out, sizes)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling unchanged in kind, else the same message as an InvalidRequestError."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:
        pass
    return InvalidRequestError(f"{type(exc).__name__}: {exc}", code=ErrorCode.INVALID_PAYLOAD)


def _nbytes(data: Any) -> int:
    """What shipping ``data`` back costs, roughly: an array's bytes, else its pickle's."""
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    return len(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))


def _pack(out: list[Prepared | BaseException], sizes: dict[str, int]) -> tuple[Any, ...]:
    """Equal-shaped arrays travel as one stacked array: unpickling one per item cost 5x more."""
    first = out[0] if out else None
    if isinstance(first, Prepared) and isinstance(first.data, np.ndarray):
        shape, dtype = first.data.shape, first.data.dtype
        if all(
            isinstance(o, Prepared)
            and isinstance(o.data, np.ndarray)
            and o.data.shape == shape
            and o.data.dtype == dtype
            for o in out
        ):
            items: list[Prepared] = out  # type: ignore[assignment]
            return ("stacked", np.stack([o.data for o in items]), [o.params for o in items], sizes)
    return ("items", out, sizes)


def _unpack(packed: tuple[Any, ...]) -> Decoded:
    if packed[0] == "stacked":
        _, stacked, params, sizes = packed
        return [Prepared(data, p) for data, p in zip(stacked, params, strict=True)], sizes
    _, out, sizes = packed
    return out, sizes
