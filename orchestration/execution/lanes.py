"""Per-model lanes that batch whatever is queued when the model is free.

Each (model, task) pair has a queue and a fixed number of runners (the model's
concurrency). A runner takes the first waiting job and everything else already
queued, up to the model's max batch, and runs them as one call on a thread of
its own. So batches grow by themselves while a model is busy (the dynamic
batching Triton users know) and different models never wait for each other.
A batch that raises is retried item by item, so one bad input fails alone.
Requests submitted with their ids can be ended by a model command (see
in_flight.py). A continuously batching lane registers each of them in
``in_flight`` until answered, since a handed-over request can still be stopped.
A fixed-batch lane registers nothing per request: it is known to ``in_flight``
once, and a cancel looks for the id among its tickets, queued or running.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from opentelemetry.trace import SpanContext

from altlas.models.manager import ModelManager
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.orchestration.execution.in_flight import Held, InFlight, RequestCancelled
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.routing.health import ModelHealth
from altlas.pipelines.base import Output, Pipeline, Prepared
from altlas.schemas.types import Record

log = logging.getLogger(__name__)


class JobResult(NamedTuple):
    """What one request got from its batch (one per request: a NamedTuple is the cheapest to build)."""

    output: Output
    started_at: float  # epoch seconds when its batch started
    inference_ms: float
    batch_size: int
    attributes: dict[str, str] | None = None  # per-request figures the pipeline reports (e.g. TTFT)


ChunkSink = Callable[[Record], None]


class _Ticket:
    """Requests queued together and answered together: one future for all of them.

    A micro-batch puts hundreds of requests on a lane at once; one future per
    ticket rather than per request saves the event loop a future, a callback
    and a wake-up for each of them.
    """

    __slots__ = ("future", "held", "items", "left", "on_chunk", "request_ids", "results", "spans")

    def __init__(
        self,
        items: Sequence[Prepared],
        spans: Sequence[SpanContext | None],
        future: asyncio.Future[list[JobResult]],
        on_chunk: ChunkSink | None,
    ) -> None:
        self.items = items
        self.spans = spans
        self.future = future
        self.on_chunk = on_chunk  # set for a streamed request (a ticket of one)
        self.results: list[JobResult | None] = [None] * len(items)
        self.left = len(items)
        self.held: list[Held] | None = None  # per item, when submitted with ids to a continuous lane
        self.request_ids: Sequence[str] | None = None  # per item, when submitted with ids to a fixed lane

    def open(self, index: int) -> bool:
        """Whether item ``index`` still waits for its answer (its caller still waits, too)."""
        return not self.future.done() and self.results[index] is None

    def named(self, index: int, request_id: str) -> bool:
        """Whether item ``index`` was submitted as ``request_id`` and still waits for its answer."""
        ids = self.request_ids
        return ids is not None and ids[index] == request_id and self.open(index)

    def end(self, index: int, reason: str) -> None:
        """Answer item ``index``, not run yet, as cancelled (if it still waits); a runner then skips it."""
        if self.open(index):
            error = RequestCancelled(f"{reason}, before it ran")
            self.answer(index, JobResult(error, time.time(), 0.0, 0, {"completion_tokens": "0"}))

    def release(self, _: object = None) -> None:
        """The caller has its answers, or gave up: a model command finds none of these requests any more."""
        for held in self.held or ():
            held.release()

    def answer(self, index: int, result: JobResult) -> None:
        """Set one result (of a ticket whose future is not done); the last one resolves the future."""
        self.results[index] = result
        self.left -= 1
        if self.held is not None:
            self.held[index].release()
        if not self.left:
            self.future.set_result(self.results)  # type: ignore[arg-type]  # all set by now


#: One queued request: its ticket and its place in it.
_Job = tuple[_Ticket, int]


def _infer(pipeline: Pipeline, key: str, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
    """Run one batch of model ``key``; a batch that raises is retried item by item."""
    try:
        outputs = pipeline.run(runtime, items)
        if len(outputs) != len(items):
            raise RuntimeError(f"pipeline returned {len(outputs)} outputs for {len(items)} inputs")
        return outputs
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        log.warning("batch of %d on %s failed (%s); isolating items", len(items), key, exc)
        return [_infer(pipeline, key, runtime, [item])[0] for item in items]


class _Lane:
    def __init__(
        self,
        spec: ModelSpec,
        pipeline: Pipeline,
        manager: ModelManager,
        tracing: Tracing,
        *,
        max_batch: int,
        concurrency: int,
        health: ModelHealth | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.spec = spec
        self.in_flight = in_flight if in_flight is not None else InFlight()
        self.health = health
        self.on_batch = on_batch
        self.pipeline = pipeline
        self.manager = manager
        self.tracing = tracing
        self.max_batch = max_batch
        self.queue: deque[_Job] = deque()
        self.queued = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"infer-{spec.id}")
        # A pipeline with ``submit`` batches continuously in its runtime (llama.cpp): every
        # request is handed over as it arrives, to join the running decode loop.
        self.continuous = callable(getattr(pipeline, "submit", None))
        self.running: set[asyncio.Task[None]] = set()
        # Per runner of a fixed-batch lane, the batch it took: a cancel reaches these, they finish.
        self.taken: list[list[_Job]] = [[] for _ in range(concurrency)]
        if not self.continuous:
            self.in_flight.add_lane(spec, self)
        self.runners = [asyncio.create_task(self._runner(slot)) for slot in range(concurrency)]

    def put(self, ticket: _Ticket, request_ids: Sequence[str] | None = None) -> None:
        if request_ids is not None:
            if self.continuous:  # each request's stop changes as it joins a decode loop
                held = [
                    self.in_flight.hold(self.spec, rid, functools.partial(ticket.end, i))
                    for i, rid in enumerate(request_ids)
                ]
                ticket.held = held
                ticket.future.add_done_callback(ticket.release)
            else:  # found by ``cancel_queued`` when a command asks
                ticket.request_ids = request_ids
        self.queue.extend((ticket, i) for i in range(len(ticket.items)))
        self.queued.set()

    def cancel_queued(self, request_id: str, reason: str) -> int:
        """End this id's queued requests (answered at once); count them and those in a running batch."""
        queued = [ticket_i for ticket_i in self.queue if ticket_i[0].named(ticket_i[1], request_id)]
        for ticket, i in queued:
            ticket.end(i, reason)
        running = sum(ticket.named(i, request_id) for batch in self.taken for ticket, i in batch)
        return len(queued) + running

    async def _runner(self, slot: int) -> None:
        queue = self.queue
        while True:
            while not queue:
                self.queued.clear()
                await self.queued.wait()
            if self.continuous:
                while queue:
                    job = queue.popleft()
                    if job[0].open(job[1]):
                        task = asyncio.create_task(self._run_one(job))
                        self.running.add(task)
                        task.add_done_callback(self.running.discard)
                continue
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            batch = [job for job in batch if job[0].open(job[1])]  # cancelled meanwhile
            self.taken[slot] = batch  # from now on a cancel reaches these but cannot interrupt them
            try:
                # A streamed request runs alone: its chunks must leave as they are made.
                for job in [j for j in batch if j[0].on_chunk is not None]:
                    await self._run([job])
                batch = [j for j in batch if j[0].on_chunk is None]
                if batch:
                    await self._run(batch)
            finally:
                self.taken[slot] = []

    async def _run(self, batch: list[_Job]) -> None:
        started = time.time()
        items = [ticket.items[i] for ticket, i in batch]
        links = [link for ticket, i in batch if (link := ticket.spans[i]) is not None]
        try:
            with self.tracing.batch_span(self.spec.key, links, len(batch)) as span:
                async with self.manager.use(self.spec) as runtime:
                    t0 = time.perf_counter()
                    with self.tracing.inference_span(span, self.spec.key):
                        loop = asyncio.get_running_loop()
                        on_chunk = batch[0][0].on_chunk
                        if on_chunk is not None:
                            outputs = await loop.run_in_executor(
                                self.executor, self._stream, runtime, items[0], on_chunk, loop
                            )
                        else:
                            outputs = await loop.run_in_executor(
                                self.executor, _infer, self.pipeline, self.spec.key, runtime, items
                            )
                    inference_ms = (time.perf_counter() - t0) * 1000
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # load failure, budget: every job of the batch gets it
            outputs, inference_ms = [exc] * len(batch), 0.0
        if self.health is not None:
            # Jobs whose callers gave up (timed out) were already counted as failures;
            # their late answers must not count as successes and close an open circuit.
            live = [out for job, out in zip(batch, outputs, strict=True) if not job[0].future.done()]
            if live:
                # A model's first batch after loading pays its warm-up (allocations, kernel
                # selection): timing it would rank the model by a cost it never pays again.
                timed = self.manager.batches_since_load(self.spec) > 1
                self.health.observe(self.spec, live, inference_ms * len(live) / len(batch) if timed else 0.0)
        if self.on_batch is not None and inference_ms > 0:
            self.on_batch(self.spec.key, len(batch), inference_ms)
        for (ticket, i), out in zip(batch, outputs, strict=True):
            if not ticket.future.done():
                ticket.answer(i, JobResult(out, started, inference_ms, len(batch)))

    async def _run_one(self, job: _Job) -> None:
        """One request on a continuously batching runtime: handed over now, answered when it ends."""
        ticket, i = job
        held = ticket.held[i] if ticket.held is not None else None
        if held is not None:
            held.handed_over(None)  # until the runtime has it, a cancel waits for it (below)
        started = time.time()
        together = len(self.running)  # requests on the model's decode loops with it: its "batch"
        loop = asyncio.get_running_loop()
        on_chunk = ticket.on_chunk
        sink = None if on_chunk is None else (lambda chunk: loop.call_soon_threadsafe(on_chunk, chunk))
        link = ticket.spans[i]
        try:
            with self.tracing.batch_span(self.spec.key, [link] if link is not None else [], 1) as span:
                async with self.manager.use(self.spec) as runtime:
                    t0 = time.perf_counter()
                    with self.tracing.inference_span(span, self.spec.key):
                        submit = self.pipeline.submit  # type: ignore[attr-defined]
                        pending = await loop.run_in_executor(
                            self.executor, submit, runtime, ticket.items[i], sink
                        )
                        if held is not None:  # from now on a cancel stops its generation
                            held.handed_over(getattr(pending, "stop", None))
                        waiter = asyncio.wrap_future(pending)
                        # The caller gave up (timeout, shutdown): stop generating, free the slot.
                        ticket.future.add_done_callback(lambda _: waiter.cancel())
                        attributes: dict[str, str] | None = None
                        try:
                            output, attributes = await waiter
                        except asyncio.CancelledError:
                            if not ticket.future.done():
                                raise
                            return
                        except Exception as exc:  # the request's own error is its answer
                            output = exc
                    inference_ms = (time.perf_counter() - t0) * 1000
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # load failure, budget
            output, inference_ms, attributes = exc, 0.0, None
        if self.health is not None and not ticket.future.done():
            timed = self.manager.batches_since_load(self.spec) > 1
            self.health.observe(self.spec, [output], inference_ms if timed else 0.0)
        if self.on_batch is not None and inference_ms > 0:
            self.on_batch(self.spec.key, 1, inference_ms)
        if not ticket.future.done():
            ticket.answer(i, JobResult(output, started, inference_ms, together, attributes))

    def _stream(
        self, runtime: ModelRuntime, item: Prepared, on_chunk: ChunkSink, loop: asyncio.AbstractEventLoop
    ) -> list[Output]:
        """Run one streamed request; chunks hop to the event loop as the model makes them."""
        run_stream = getattr(self.pipeline, "run_stream", None)
        if run_stream is None:
            return _infer(self.pipeline, self.spec.key, runtime, [item])
        try:
            output: Output = run_stream(
                runtime, item, lambda chunk: loop.call_soon_threadsafe(on_chunk, chunk)
            )
            return [output]
        except Exception as exc:
            return [exc]

    async def close(self) -> None:
        self.in_flight.drop_lane(self.spec, self)
        for task in [*self.runners, *self.running]:
            task.cancel()
        await asyncio.gather(*self.runners, *self.running, return_exceptions=True)
        while self.queue:
            self.queue.popleft()[0].future.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


class Demand(Counter[str]):
    """Requests consumed and routed to a model but not answered yet, per model key.

    The processor counts a request in when it routes it and out when it is answered.
    The manager never evicts a model with demand (its requests are waiting in our
    buffers) and the planner weighs a model's backlog by it. It is made before the
    manager, which the lanes need, so the same counter is handed to all of them.
    """

    def pending(self, model_key: str) -> int:
        """Requests routed to ``model_key`` and not answered yet."""
        return self[model_key]

    def pinned(self, model_key: str) -> bool:
        """Whether requests still wait for ``model_key`` (so it must not be evicted)."""
        return self[model_key] > 0


class ModelWorkers:
    """All lanes of one process."""

    def __init__(
        self,
        manager: ModelManager,
        tracing: Tracing,
        *,
        max_batch: int,
        concurrency: int,
        health: ModelHealth | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        demand: Demand | None = None,
    ) -> None:
        self.in_flight = InFlight()  # requests submitted with their ids, for model commands
        self.manager = manager
        self.on_batch = on_batch
        self.tracing = tracing
        self.max_batch = max_batch
        self.concurrency = concurrency
        self.health = health
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self.demand = demand if demand is not None else Demand()

    def submit(
        self,
        spec: ModelSpec,
        pipeline: Pipeline,
        items: Sequence[Prepared],
        spans: Sequence[SpanContext | None],
        on_chunk: ChunkSink | None = None,
        *,
        request_ids: Sequence[str] | None = None,
    ) -> asyncio.Future[list[JobResult]]:
        """Queue prepared requests on their model's lane; the future gives their results in order.

        ``on_chunk`` streams the partial outputs of a single request. Cancelling
        the future drops whatever of it has not run yet. With ``request_ids``
        (one per item) a model command can end them (``in_flight``).
        """
        key = (spec.key, pipeline.task)
        lane = self._lanes.get(key)
        if lane is None:
            max_batch = max(1, min(self.max_batch, spec.metadata.max_batch))
            concurrency = spec.metadata.concurrency or self.concurrency
            lane = self._lanes[key] = _Lane(
                spec,
                pipeline,
                self.manager,
                self.tracing,
                max_batch=max_batch,
                concurrency=concurrency,
                health=self.health,
                on_batch=self.on_batch,
                in_flight=self.in_flight,
            )
        future: asyncio.Future[list[JobResult]] = asyncio.get_running_loop().create_future()
        if on_chunk is not None and len(items) != 1:
            raise ValueError("a streamed request is submitted alone")
        lane.put(_Ticket(items, spans, future, on_chunk), request_ids)
        return future

    def health_failure(self, spec: ModelSpec, error: BaseException) -> None:
        """Count a failure the lanes did not see (a request that timed out waiting)."""
        if self.health is not None:
            self.health.observe(spec, [error], 0.0)

    def pending(self, model_key: str) -> int:
        """Requests routed to a model and not answered yet (queued, running or still decoding)."""
        return self.demand.pending(model_key)

    async def close(self) -> None:
        """Stop all runners; queued jobs are cancelled."""
        await asyncio.gather(*(lane.close() for lane in self._lanes.values()))
        self._lanes.clear()
