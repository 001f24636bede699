"""Decoder processes: same inputs as the threads, crashes isolated, big inputs back on threads."""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altlas.models.registry import ModelSpec
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.execution.preparation import Decoder, Todo
from altlas.pipelines.base import Prepared
from altlas.pipelines.image_classification import ImageClassificationPipeline
from altlas.schemas.errors import AltlasError, ErrorCode, InvalidRequestError
from altlas.schemas.types import ResultStatus
from tests.builders import MEAN_COLOR_LABELS, expected_mean_color
from tests.conftest import connect, isolated_settings, serving
from tests.decode_pipelines import LockedPipeline, WherePipeline
from tests.images import encode, solid

SPEC = ModelSpec("where", "1", "vision.where", "onnx", None)


@pytest.fixture
async def decoder() -> AsyncIterator[Decoder]:
    d = Decoder(1, 1)
    await d.start()
    try:
        yield d
    finally:
        d.shutdown()


@pytest.fixture
def one_thread() -> Iterator[Decoder]:
    """One decode thread with a 1 s time limit: the slow payload (5 s) overruns it."""
    d = Decoder(1, timeout_s=1.0)
    try:
        yield d
    finally:
        d.shutdown()


def _pids(out: list[Prepared | BaseException]) -> list[int | str]:
    """The process that prepared each item, or its error's class name."""
    return [type(o).__name__ if isinstance(o, BaseException) else int(o.data[0]) for o in out]


async def test_processes_prepare_the_same_tensors_and_errors_as_threads(
    decoder: Decoder, models_dir: Path
) -> None:
    spec = ModelSpec(
        "mean-color", "1", "vision.classify", "onnx", models_dir / "mean_color.onnx",
        params={"preprocess": {"resize": 4}},
    )  # fmt: skip
    pipeline = ImageClassificationPipeline()
    payloads: list[bytes | str] = [solid((i * 3, 255 - i, 7 * i % 256), size=4 + i % 9) for i in range(70)]
    payloads += [
        encode(Image.new("RGB", (30, 20), (9, 99, 199)), "JPEG"),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"",
        "text",
    ]
    todo: list[Todo] = [(pipeline, p, {}, spec) for p in payloads]
    todo.append((pipeline, payloads[0], {"top_k": 0}, spec))  # invalid params are found while decoding

    valid = todo[:70]  # equally shaped tensors: they travel back as one stacked array
    threads = Decoder(1)
    try:
        expected = [await threads.prepare_many(todo), await threads.prepare_many(valid)]
    finally:
        threads.shutdown()
    got = [await decoder.prepare_many(todo), await decoder.prepare_many(valid)]

    assert decoder.processes is not None and decoder.processes.crashes == 0
    assert [len(g) for g in got] == [len(e) for e in expected] == [75, 70]
    for mine, theirs in zip(got[0] + got[1], expected[0] + expected[1], strict=True):
        if isinstance(theirs, AltlasError):
            assert type(mine) is type(theirs) and isinstance(mine, AltlasError)
            assert (mine.code, mine.message) == (theirs.code, theirs.message)
        else:
            assert isinstance(mine, Prepared) and isinstance(theirs, Prepared)
            np.testing.assert_array_equal(mine.data, theirs.data)
            assert mine.data.dtype == theirs.data.dtype and dict(mine.params) == dict(theirs.params)
    assert sum(isinstance(o, Prepared) for o in got[0]) == 71


async def test_payloads_are_decoded_in_a_worker_process_in_request_order(decoder: Decoder) -> None:
    where, locked = WherePipeline(), LockedPipeline()
    locked_spec = ModelSpec("locked", "1", "vision.where", "x", None)
    # Interleaved: items for the process and items that stay on threads come back in request order.
    todo: list[Todo] = [
        (where, b"x" * (i + 1), {}, SPEC) if i % 3 else (locked, b"x" * (i + 1), {}, locked_spec)
        for i in range(90)
    ]
    out = await decoder.prepare_many(todo)
    pids = _pids(out)
    assert all(isinstance(o, Prepared) and len(o.data) == i + 1 for i, o in enumerate(out))
    remote = {pids[i] for i in range(90) if i % 3}
    assert len(remote) == 1 and os.getpid() not in remote  # the decoder process
    # The lock does not pickle: those payloads fell back to the threads of this process.
    assert {pids[i] for i in range(90) if not i % 3} == {os.getpid()}
    assert not decoder._threads_only
    again = _pids(await decoder.prepare_many(todo))
    assert {again[i] for i in range(90) if i % 3} == remote and {
        again[i] for i in range(90) if not i % 3
    } == {os.getpid()}


async def test_a_payload_that_crashes_its_decoder_fails_alone(decoder: Decoder) -> None:
    where = WherePipeline()
    payloads = [b"a", b"bb", b"segv", b"ccc", b"dddd"] * 2
    out = await decoder.prepare_many([(where, p, {}, SPEC) for p in payloads])

    # The chunk broke its worker; alone, each "segv" broke one more. A pool is replaced only after a
    # crash, never before a payload that follows one that went through.
    assert decoder.processes is not None and decoder.processes.crashes == 3
    assert decoder.processes._generation == 3
    for payload, o in zip(payloads, out, strict=True):
        if payload == b"segv":
            assert isinstance(o, InvalidRequestError) and o.code == ErrorCode.INVALID_PAYLOAD
            assert "crashed its decoder" in o.message
        else:
            assert isinstance(o, Prepared) and len(o.data) == len(payload)
            assert int(o.data[0]) != os.getpid()
    # The replaced pool goes on decoding.
    (after,) = await decoder.prepare_many([(where, b"ok", {}, SPEC)])
    assert isinstance(after, Prepared) and int(after.data[0]) != os.getpid()


async def test_an_exception_that_cannot_travel_back_keeps_its_message(decoder: Decoder) -> None:
    where = WherePipeline()
    out = await decoder.prepare_many([(where, b"stubborn", {}, SPEC), (where, b"fine", {}, SPEC)])
    assert isinstance(out[0], InvalidRequestError) and out[0].code == ErrorCode.INVALID_PAYLOAD
    assert out[0].message == "StubbornError: stubborn: will not pickle back"
    assert isinstance(out[1], Prepared)
    with pytest.raises(InvalidRequestError, match="StubbornError"):
        await decoder.prepare((where, b"stubborn", {}, SPEC))


async def test_a_model_with_big_inputs_goes_back_to_threads() -> None:
    decoder = Decoder(1, 1, process_max_item_bytes=800)  # 100 int64s
    await decoder.start()
    try:
        where = WherePipeline()
        small = ModelSpec("small", "1", "vision.where", "x", None)
        big = ModelSpec("big", "1", "vision.where", "x", None)
        first = await decoder.prepare_many([(where, b"s" * 10, {}, small), (where, b"b" * 101, {}, big)])
        assert os.getpid() not in _pids(first)  # the first chunk of each went to the process
        second = await decoder.prepare_many([(where, b"s" * 10, {}, small), (where, b"b" * 101, {}, big)])
        assert _pids(second)[0] != os.getpid() and _pids(second)[1] == os.getpid()
        assert decoder._threads_only == {"big@1"}
    finally:
        decoder.shutdown()


async def test_service_with_a_decoder_process_answers_and_dead_letters_over_kafka(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, registry_file, batching={"decode_processes": 1})
    colours = [(250, 10, 10), (10, 240, 10), (20, 20, 230), (128, 128, 128)] * 5
    requests = [
        make_request("vision", "classify", solid(rgb), model="mean-color@1", request_id=f"ok-{i}")
        for i, rgb in enumerate(colours)
    ]
    truncated = solid((1, 2, 3), size=64)[:60]  # a PNG header, then its pixel data cut short
    corrupt = make_request("vision", "classify", truncated, model="mean-color@1", request_id="corrupt")
    async with serving(settings) as running, connect(settings) as client:
        assert running.orchestrator.decoder.processes is not None
        async with (
            client.reader(settings.topics.results("vision")) as results,
            client.reader(settings.topics.dead_letter) as dlq,
        ):
            await client.send_many([*requests, corrupt])
            found = await client.collect(results, "vision", [r.request_id for r in [*requests, corrupt]], 60)
            letters = []
            while not letters:
                letters = [client.decode_dead_letter(r.value) for r in await dlq.read(1.0)]
    assert len(found) == 21
    for i, rgb in enumerate(colours):
        result = found[f"ok-{i}"]
        assert result.status == ResultStatus.OK and result.output is not None
        want = MEAN_COLOR_LABELS[int(np.argmax(expected_mean_color(rgb)))]
        assert result.output.labels[0].label == want  # type: ignore[union-attr]
    bad = found["corrupt"]
    assert bad.status == ResultStatus.ERROR and bad.error is not None
    assert bad.error.code == ErrorCode.INVALID_PAYLOAD.value and "corrupt image" in bad.error.message
    (letter,) = letters
    assert letter.request_id == "corrupt" and letter.error_code == ErrorCode.INVALID_PAYLOAD.value
    assert letter.value is not None and letter.topic == settings.topics.requests("vision")


async def test_concurrent_first_decodes_start_one_pool() -> None:
    decoder = Decoder(1, 1)  # not started: the first decodes start it
    assert decoder.processes is not None
    pools = []
    new_pool = decoder.processes._new_pool
    decoder.processes._new_pool = lambda: pools.append(1) or new_pool()  # type: ignore[method-assign]
    try:
        where = WherePipeline()
        outs = await asyncio.gather(
            *(decoder.prepare_many([(where, b"x" * (n + 1), {}, SPEC)]) for n in range(3))
        )
        assert [len(out[0].data) for out in outs] == [1, 2, 3]  # type: ignore[union-attr]
        assert pools == [1]
    finally:
        decoder.shutdown()


async def test_every_pipeline_that_decodes_anywhere_prepares_the_same_in_a_process() -> None:
    """Vision detect/segment/OCR and the audio pipelines, with their real decoders: what a worker
    process prepares and pickles back is what the threads prepare."""
    from altlas.models.registry import ModelRegistry
    from altlas.pipelines.audio_classification import AudioClassificationPipeline
    from altlas.pipelines.detection import DetectionPipeline
    from altlas.pipelines.diarization import DiarizationPipeline
    from altlas.pipelines.ocr import OcrPipeline
    from altlas.pipelines.segmentation import SegmentationPipeline
    from altlas.pipelines.transcription import TranscriptionPipeline
    from tests.fixtures_audio import BAND_PARAMS, synthetic_voice, wav_bytes
    from tests.images import text_page
    from tests.vision_builders import DBNET_PARAMS, LAYOUT_PARAMS

    entries = [
        ("face", "vision.detect", "opencv-cascade", {}),
        ("layout", "vision.detect", "onnx", LAYOUT_PARAMS),
        ("yolo", "vision.detect", "ultralytics", {}),
        ("text-map", "vision.segment", "onnx", DBNET_PARAMS),
        ("tesseract", "vision.ocr", "tesseract", {}),
        ("band", "audio.classify", "onnx", BAND_PARAMS),
        ("vad", "audio.classify", "silero-vad", {}),
        ("whisper", "audio.transcribe", "faster-whisper", {}),
        ("speakers", "audio.diarize", "ge2e", {}),
    ]
    # prepare() reads the registry entries only: no model file is opened.
    registry = ModelRegistry.from_dict(
        {
            "models": [  # tesseract's path would name its tessdata folder: none here
                {
                    "id": i,
                    "task": t,
                    "backend": b,
                    "params": p,
                    **({} if b == "tesseract" else {"path": f"/m/{i}"}),
                }
                for i, t, b, p in entries
            ]
        }
    )
    page = encode(text_page(320, 240), "PNG")
    speech = wav_bytes(synthetic_voice(1.5))
    todo: list[Todo] = [
        (DetectionPipeline(), page, {}, registry.get("face")),
        (DetectionPipeline(), page, {"threshold": 0.3}, registry.get("layout")),
        (DetectionPipeline(), page, {}, registry.get("yolo")),
        (SegmentationPipeline(), page, {}, registry.get("text-map")),
        (OcrPipeline(), page, {}, registry.get("tesseract")),
        (AudioClassificationPipeline(), speech, {}, registry.get("band")),
        (AudioClassificationPipeline(), speech, {}, registry.get("vad")),
        (TranscriptionPipeline(), speech, {"language": "en"}, registry.get("whisper")),
        (DiarizationPipeline(), speech, {}, registry.get("speakers")),
        (TranscriptionPipeline(), b"not audio", {}, registry.get("whisper")),
    ]
    threads = Decoder(1)
    processes = Decoder(1, 1, process_max_item_bytes=1 << 40)
    await processes.start()
    try:
        expected = await threads.prepare_many(todo)
        got = await processes.prepare_many(todo)
    finally:
        threads.shutdown()
        processes.shutdown()
    assert not processes._threads_only and not processes._local_pipelines  # all went to the process
    for (pipeline, _, _, spec), mine, theirs in zip(todo, got, expected, strict=True):
        if isinstance(theirs, BaseException):
            assert type(mine) is type(theirs) and str(mine) == str(theirs), spec.key
        else:
            assert isinstance(mine, Prepared), (spec.key, mine)
            assert pickle.dumps(mine.data) == pickle.dumps(theirs.data), (pipeline.task, spec.key)
    assert sum(isinstance(o, Prepared) for o in got) == 9


@pytest.mark.parametrize("processes", [0, 1])
async def test_a_decode_past_the_time_limit_fails_alone_and_frees_its_worker(processes: int) -> None:
    decoder = Decoder(1, processes, timeout_s=1.0)
    await decoder.start()
    try:
        pipeline = WherePipeline()
        payloads = [b"a", b"bb", b"slow", b"ccc", b"dddd"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        out = await decoder.prepare_many([(pipeline, p, {}, SPEC) for p in payloads])
        elapsed = loop.time() - started
        assert isinstance(out[2], AltlasError) and out[2].code is ErrorCode.DECODE_TIMED_OUT
        assert [len(o.data) for o in out if isinstance(o, Prepared)] == [1, 2, 3, 4]
        assert elapsed < 4.5, elapsed  # not the five seconds the slow payload wanted
        # The pool still decodes at full capacity afterwards.
        again = await decoder.prepare_many([(pipeline, b"ee", {}, SPEC)])
        assert isinstance(again[0], Prepared)
        if processes:
            assert decoder.processes is not None and decoder.processes.crashes >= 1
        else:
            assert decoder.abandoned_threads == 1
    finally:
        decoder.shutdown()


async def test_a_chunk_queued_behind_a_decode_that_overruns_is_decoded_not_timed_out(
    one_thread: Decoder,
) -> None:
    # One thread; the slow payload (another tenant's) overruns while a second batch waits for the
    # thread. That batch never started decoding: it must be decoded once the thread is given up,
    # not answered DECODE_TIMED_OUT along with the payload that took the time.
    pipeline = WherePipeline()
    slow = asyncio.ensure_future(one_thread.prepare_many([(pipeline, b"slow", {}, SPEC)]))
    await asyncio.sleep(0.1)  # the slow payload has the thread
    innocent = await one_thread.prepare_many([(pipeline, b"abc", {}, SPEC)])
    (timed_out,) = await slow
    assert isinstance(timed_out, AltlasError) and timed_out.code is ErrorCode.DECODE_TIMED_OUT
    assert isinstance(innocent[0], Prepared) and len(innocent[0].data) == 3, innocent
    assert one_thread.abandoned_threads == 1  # the slow one's thread only


async def test_a_cancelled_chunk_keeps_its_thread_until_the_thread_is_done(one_thread: Decoder) -> None:
    # A batch cancelled (a rewind, a shutdown) while its payload decodes: the thread is still busy, so
    # the next chunk waits behind it, and its time limit starts only when a thread takes it.
    pipeline = WherePipeline()
    slow = asyncio.ensure_future(one_thread.prepare_many([(pipeline, b"slow", {}, SPEC)]))
    await asyncio.sleep(0.1)
    slow.cancel()
    (after,) = await one_thread.prepare_many([(pipeline, b"abc", {}, SPEC)])
    assert isinstance(after, Prepared) and len(after.data) == 3, after
    assert one_thread.abandoned_threads == 0


async def test_an_ensembles_payload_decodes_once_within_the_time_limit(one_thread: Decoder) -> None:
    pipeline = WherePipeline()
    members = [(pipeline, b"slow", {}, SPEC)] * 3
    out = await one_thread.prepare_together(members)
    assert all(isinstance(o, AltlasError) and o.code is ErrorCode.DECODE_TIMED_OUT for o in out), out
    assert one_thread.abandoned_threads == 1  # not decoded again for the next member
    together = await one_thread.prepare_together([(pipeline, b"ab", {}, SPEC)] * 3)
    assert [len(o.data) for o in together if isinstance(o, Prepared)] == [2, 2, 2]
