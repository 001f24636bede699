"""CPU turns: a model batch on every core never runs beside payload decoding, and neither starves."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from altlas.models.manager import ModelManager
from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.models.runtime import ModelRuntime, available_cores, uses_every_core
from altlas.orchestration.cpugate import CpuGate
from altlas.orchestration.decoding import Decoder, Todo
from altlas.orchestration.tracing import Tracing
from altlas.orchestration.workers import ModelWorkers
from altlas.pipelines.base import Output, Prepared
from altlas.pipelines.image_classification import ImageClassificationPipeline
from altlas.schemas.types import Classification, ParamValue
from tests.builders import mean_color_registry
from tests.images import solid

MODEL_S = 0.05  # how long each model batch holds the cores


def _spec(models_dir: Path, **params: object) -> ModelSpec:
    return mean_color_registry(models_dir, **params).get("c")


class Timed(ImageClassificationPipeline):
    """The real pipeline and model, recording when each decode and each batch ran."""

    def __init__(self) -> None:
        super().__init__()
        self.decodes: list[tuple[float, float]] = []
        self.batches: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        t0 = time.perf_counter()
        out = super().prepare(payload, params, spec)
        time.sleep(0.002)  # a decode long enough to be caught beside a batch
        with self._lock:
            self.decodes.append((t0, time.perf_counter()))
        return out

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        t0 = time.perf_counter()
        out = super().run(runtime, items)
        time.sleep(MODEL_S)
        with self._lock:
            self.batches.append((t0, time.perf_counter()))
        return out


def _overlaps(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> int:
    return sum(1 for s1, e1 in a for s2, e2 in b if s1 < e2 and s2 < e1)


async def _decode_while_batches_run(models_dir: Path, gate: CpuGate, workers_gate: CpuGate | None) -> Timed:
    """Keep model batches coming while a stream of payloads is decoded, as a busy stream does."""
    spec = _spec(models_dir)
    pipeline = Timed()
    decoder = Decoder(2, gate)
    workers = ModelWorkers(
        ModelManager(ModelRegistry([spec])), Tracing(None), max_batch=4, concurrency=1, gate=workers_gate
    )
    image = solid((200, 10, 10))
    try:
        first = await decoder.prepare((pipeline, image, {}, spec))
        await workers.submit(spec, pipeline, first, None)  # loaded and warm before the clock starts
        pipeline.decodes.clear()
        pipeline.batches.clear()
        jobs = [workers.submit(spec, pipeline, first, None) for _ in range(24)]  # 6 batches of 4
        todo: list[Todo] = [(pipeline, image, {}, spec)] * 16
        decoded = await asyncio.gather(*(decoder.prepare_many(todo) for _ in range(8)))
        results = await asyncio.gather(*jobs)
    finally:
        await workers.close()
        decoder.shutdown()
    assert all(isinstance(p, Prepared) for part in decoded for p in part)
    assert all(isinstance(r.output, Classification) for r in results)
    return pipeline


async def test_decoding_never_runs_beside_a_batch_on_every_core(models_dir: Path) -> None:
    gate = CpuGate()
    timed = await _decode_while_batches_run(models_dir, gate, gate)
    assert len(timed.decodes) == 128 and len(timed.batches) == 6
    assert _overlaps(timed.decodes, timed.batches) == 0


async def test_without_turns_decoding_and_batches_do_overlap(models_dir: Path) -> None:
    """The control: with lanes that ignore the gate, the same load overlaps (the test above can fail)."""
    timed = await _decode_while_batches_run(models_dir, CpuGate(), None)
    assert _overlaps(timed.decodes, timed.batches) > 0


def test_decoders_share_the_cores_with_each_other() -> None:
    gate = CpuGate()
    inside = threading.Barrier(2, timeout=5)

    def decode() -> None:
        with gate.decoding():
            inside.wait()  # both decoders are inside at once, or this times out

    threads = [threading.Thread(target=decode, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert not inside.broken


def _wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_waiting_batch_goes_before_new_decodes_and_a_long_decode_steps_aside() -> None:
    gate = CpuGate()
    order: list[str] = []
    decoding, go_on = threading.Event(), threading.Event()

    def long_decode() -> None:
        with gate.decoding():
            decoding.set()
            go_on.wait(5)
            order.append("decode 1")
            gate.yield_to_model()  # between payloads: the waiting batch runs now
            order.append("decode 2")

    def batch() -> None:
        with gate.model():
            order.append("batch")
            time.sleep(0.05)

    def late_decode() -> None:
        with gate.decoding():
            order.append("late decode")

    first = threading.Thread(target=long_decode, daemon=True)
    first.start()
    assert decoding.wait(5)
    second = threading.Thread(target=batch, daemon=True)
    second.start()
    _wait_until(lambda: gate.model_waiting)  # the batch waits for the decoder inside
    third = threading.Thread(target=late_decode, daemon=True)
    third.start()
    time.sleep(0.05)
    assert order == []  # the late decoder does not slip in ahead of the waiting batch
    go_on.set()
    for t in (first, second, third):
        t.join(5)
        assert not t.is_alive()
    assert order.index("decode 1") < order.index("batch") < order.index("decode 2")
    assert order.index("batch") < order.index("late decode")


@pytest.mark.skipif(available_cores() < 2, reason="one core: every session uses every core")
def test_onnx_on_cpu_says_whether_it_takes_every_core(models_dir: Path) -> None:
    default = OnnxRuntime(_spec(models_dir))
    one_thread = OnnxRuntime(_spec(models_dir, intra_op_threads=1, allow_spinning=True))
    default.load()
    one_thread.load()
    try:
        assert uses_every_core(default) and not uses_every_core(one_thread)
        # Idle pool threads do not spin unless asked: they would burn the decoders' cores.
        assert default.session is not None and one_thread.session is not None
        spinning = "session.intra_op.allow_spinning"
        assert default.session.get_session_options().get_session_config_entry(spinning) == "0"
        assert one_thread.session.get_session_options().get_session_config_entry(spinning) == "1"
    finally:
        default.unload()
        one_thread.unload()
    assert not uses_every_core(default)  # unloaded: holds nothing
