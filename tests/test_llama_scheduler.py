"""Continuous batching and prefix reuse give every request the text it gets alone.

Real GGUF models (the tiny random one and the trained SmolLM2-135M): requests
join and leave a running decode loop at random moments, share prompt prefixes
with running and finished sequences, and are cancelled mid-generation; each
answer must equal the one-request-at-a-time answer without any reuse.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from altlas.models.errors import GenerationCancelled
from altlas.models.llama import LlamaRuntime
from altlas.models.llama_scheduler import MIN_COPY_TOKENS, Generation, Job, cells_needed, common_prefix
from altlas.models.llama_text import ContextOverflowError, GenerationRequest, GenerationResult, Sampling
from altlas.models.registry import ModelRegistry


def _runtime(path: Path, **params: Any) -> LlamaRuntime:
    registry = ModelRegistry.from_dict(
        {"models": [{"id": "m", "tasks": ["text.generate", "text.chat"], "backend": "llama.cpp",
                     "path": str(path), "params": params}]}
    )  # fmt: skip
    runtime = LlamaRuntime(registry.get("m"))
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def alone_tiny(tiny_gguf: Path) -> Iterator[LlamaRuntime]:
    """The reference: one slot, no cached prefixes, no reuse."""
    runtime = _runtime(tiny_gguf, batch_sequences=1, cached_prefixes=0, prompt_cache=False)
    yield runtime
    runtime.unload()


@pytest.fixture(scope="module")
def alone_smol(smollm2_gguf: Path) -> Iterator[LlamaRuntime]:
    runtime = _runtime(smollm2_gguf, n_ctx=1024, batch_sequences=1, cached_prefixes=0, prompt_cache=False)
    yield runtime
    runtime.unload()


def _key(result: GenerationResult) -> tuple[str, str, int]:
    return result.text, result.finish_reason, result.completion_tokens


def _staggered(runtime: LlamaRuntime, requests: list[GenerationRequest], seed: int) -> list[GenerationResult]:
    """Submit with random gaps, so requests join while others are mid-prompt or mid-generation."""
    rng = random.Random(seed)
    futures = []
    for request in requests:
        futures.append(runtime.submit(request))
        time.sleep(rng.choice([0.0, 0.0, 0.002, 0.01, 0.03]))
    return [f.result(timeout=120) for f in futures]


def _tiny_requests() -> list[GenerationRequest]:
    lead = "the big red house on the hill is where the old cat sleeps all day and"
    prompts = [lead + " the dog", lead + " the bird", "one two three", lead, "x y z", lead + " a tree"]
    requests = []
    for i, prompt in enumerate(prompts * 2):
        if i % 3 == 0:
            sampling = Sampling(max_tokens=8 + 7 * i, temperature=1.0, seed=100 + i)  # seeded
        elif i % 3 == 1:
            sampling = Sampling(max_tokens=5 + 5 * i, temperature=0.0)  # greedy
        else:
            sampling = Sampling(max_tokens=30, temperature=0.7, top_k=5, seed=i, stop=(" cat",))
        requests.append(GenerationRequest(prompt=prompt, sampling=sampling))
    requests.append(
        GenerationRequest(prompt="x", sampling=Sampling(temperature=0.0, grammar='root ::= " sky"+'))
    )
    return requests


@pytest.mark.parametrize("slots", [2, 3, 5])
def test_any_mix_of_joins_and_leaves_gives_each_request_its_alone_text(
    tiny_gguf: Path, alone_tiny: LlamaRuntime, slots: int
) -> None:
    requests = _tiny_requests()
    want = [_key(alone_tiny.generate(r)) for r in requests]
    runtime = _runtime(tiny_gguf, batch_sequences=slots, cached_prefixes=1, n_batch=16)  # prompts in chunks
    try:
        for seed in range(3):
            got = _staggered(runtime, requests, seed)
            assert [_key(g) for g in got] == want
        assert any(g.cached_prompt_tokens > 0 for g in got)  # prefixes were reused, not re-evaluated
    finally:
        runtime.unload()


def test_the_trained_model_gives_the_same_chat_answers_batched_with_a_shared_system_prompt(
    smollm2_gguf: Path, alone_smol: LlamaRuntime
) -> None:
    system = {"role": "system", "content": "You are a concise assistant. " * 12}
    questions = ["What is 2+2?", "Name a color.", "What is the capital of France?", "Say hello.",
                 "Count to five.", "What is water made of?", "Name a fruit."]  # fmt: skip
    requests = [
        GenerationRequest(
            messages=(system, {"role": "user", "content": q}),
            sampling=Sampling(max_tokens=12 + 6 * i, temperature=0.0 if i % 2 else 0.9, seed=i),
        )
        for i, q in enumerate(questions)
    ]
    want = [_key(alone_smol.generate(r)) for r in requests]
    runtime = _runtime(smollm2_gguf, n_ctx=1024, batch_sequences=3, cached_prefixes=1, n_batch=64)
    try:
        got = _staggered(runtime, requests, seed=7)
    finally:
        runtime.unload()
    assert [_key(g) for g in got] == want
    assert all(w[0].strip() for w in want) and "Paris" in want[2][0]  # real answers (index 2 is greedy)
    system_tokens = len(alone_smol.prompt_tokens(GenerationRequest(messages=(system,))))
    # Only the first arrivals, evaluating side by side before anything is cached, start cold.
    assert sum(g.cached_prompt_tokens >= system_tokens - 2 for g in got) >= len(got) - 3


def test_a_prefix_is_copied_from_a_running_sequence_and_gives_the_same_text(
    smollm2_gguf: Path, alone_smol: LlamaRuntime
) -> None:
    lead = (
        "In a small village by the sea, between the cliffs and the long white beach where the children "
        "played all summer, there lived an old fisherman with a grey beard who every morning "
    )
    first = GenerationRequest(prompt=lead + "went out", sampling=Sampling(max_tokens=60, temperature=0.0))
    second = GenerationRequest(prompt=lead + "sang", sampling=Sampling(max_tokens=10, temperature=0.0))
    runtime = _runtime(smollm2_gguf, n_ctx=1024, batch_sequences=2, cached_prefixes=0)
    try:
        started = threading.Event()
        running = runtime.submit(first, lambda _: started.set())
        assert started.wait(30)
        copied = runtime.submit(second).result(timeout=60)  # the only other slot is empty: copy
        assert _key(running.result(timeout=60)) == _key(alone_smol.generate(first))
    finally:
        runtime.unload()
    assert _key(copied) == _key(alone_smol.generate(second))
    tokens = alone_smol.prompt_tokens(second)
    shared = min(common_prefix(alone_smol.prompt_tokens(first), tokens), len(tokens) - 2)  # >= 2 evaluated
    assert copied.cached_prompt_tokens == shared >= MIN_COPY_TOKENS


def test_prompt_cache_never_makes_a_result_depend_on_the_previous_request(
    tiny_gguf: Path, alone_tiny: LlamaRuntime
) -> None:
    target = GenerationRequest(prompt="the old cat sleeps", sampling=Sampling(max_tokens=20, seed=5))
    want = _key(alone_tiny.generate(target))
    runtime = _runtime(tiny_gguf, batch_sequences=1, cached_prefixes=2, prompt_cache=True)
    try:
        for before in ["the old cat sleeps all day", "the old", "the old cat sleeps", "dog"]:
            runtime.generate(GenerationRequest(prompt=before, sampling=Sampling(max_tokens=9, seed=1)))
            assert _key(runtime.generate(target)) == want
    finally:
        runtime.unload()


def _long_then_queued(
    runtime: LlamaRuntime,
) -> tuple[list[str], threading.Event, Generation, Generation]:
    """A long generation holding the only slot (``enough`` once 5 pieces are out), one queued behind it."""
    pieces: list[str] = []
    enough = threading.Event()

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) >= 5:
            enough.set()

    long = runtime.submit(
        GenerationRequest(prompt="Once upon a time", sampling=Sampling(max_tokens=900, temperature=0.0)),
        on_text,
    )
    queued = runtime.submit(GenerationRequest(prompt="The sky is", sampling=Sampling(max_tokens=4)))
    return pieces, enough, long, queued


def test_a_cancelled_generation_frees_its_slot_within_a_step_and_keeps_its_text(
    smollm2_gguf: Path,
) -> None:
    runtime = _runtime(smollm2_gguf, n_ctx=1024, batch_sequences=1, cached_prefixes=0)
    try:
        pieces, enough, long, queued = _long_then_queued(runtime)
        assert enough.wait(30)
        at_cancel = len(pieces)
        long.cancel()
        assert queued.result(timeout=30).completion_tokens == 4  # it got the slot
        with pytest.raises(GenerationCancelled) as caught:
            long.result(timeout=5)
    finally:
        runtime.unload()
    assert at_cancel <= caught.value.completion_tokens <= at_cancel + 2
    assert caught.value.partial_text.startswith("".join(pieces[:at_cancel]))


def test_a_stopped_generation_frees_its_slot_within_a_step_and_is_answered_with_its_text(
    smollm2_gguf: Path,
) -> None:
    """``stop`` (a model command's cancel) ends it like a deadline does: an error with the text so far."""
    runtime = _runtime(smollm2_gguf, n_ctx=1024, batch_sequences=1, cached_prefixes=0)
    try:
        pieces, enough, long, queued = _long_then_queued(runtime)
        never_started = runtime.submit(GenerationRequest(prompt="Hello", sampling=Sampling(max_tokens=4)))
        assert enough.wait(30)
        never_started.stop("cancelled by model command c0")
        at_stop = len(pieces)
        long.stop("cancelled by model command c1")
        assert queued.result(timeout=30).completion_tokens == 4  # it got the freed slot
        with pytest.raises(GenerationCancelled) as caught:
            long.result(timeout=5)
        with pytest.raises(GenerationCancelled) as before:
            never_started.result(timeout=5)
    finally:
        runtime.unload()
    assert not long.cancelled()  # answered, unlike cancel(): the text so far is the answer
    assert "cancelled by model command c1" in str(caught.value)
    assert at_stop <= caught.value.completion_tokens <= at_stop + 2  # within one decode step
    assert caught.value.partial_text.startswith("".join(pieces[:at_stop])) and caught.value.partial_text
    assert str(before.value) == "cancelled by model command c0, before it started"
    assert before.value.completion_tokens == 0 and before.value.partial_text == ""


def test_waiting_requests_take_slots_in_arrival_order_and_a_full_stream_is_not_overtaken(
    tiny_gguf: Path, alone_tiny: LlamaRuntime
) -> None:
    """A slot has n_ctx cells of its own: a request needing all of them waits for a slot, first in line."""
    runtime = _runtime(tiny_gguf, batch_sequences=1, cached_prefixes=0)
    scheduler = runtime._schedulers[0]
    prompt = "the big red house on the hill"
    room = scheduler.cells_per_slot - len(runtime.prompt_tokens(GenerationRequest(prompt=prompt)))
    big = GenerationRequest(prompt=prompt, sampling=Sampling(max_tokens=room, temperature=0.0))
    a, b = (GenerationRequest(prompt=p, sampling=Sampling(max_tokens=3, temperature=0.0)) for p in ("a", "b"))
    want = [256, *(len(runtime.prompt_tokens(r)) + 3 for r in (a, b))]
    started: list[str] = []

    def first_text(name: str) -> Callable[[str], None]:
        return lambda _: None if name in started else started.append(name)

    in_slot, looked = threading.Event(), threading.Event()

    def hold_the_loop(_: str) -> None:  # the scheduler's thread waits here: nothing is admitted meanwhile
        if not in_slot.is_set():
            in_slot.set()
            looked.wait(30)

    try:
        assert scheduler.cells_per_slot == runtime.n_ctx == 256
        head = runtime.submit(
            GenerationRequest(prompt="one two", sampling=Sampling(max_tokens=20)), hold_the_loop
        )
        assert in_slot.wait(30)
        futures = [runtime.submit(r, first_text(n)) for n, r in (("big", big), ("a", a), ("b", b))]
        # The slot's cells are all the running request's: everyone waits, in arrival order.
        needs = [cells_needed(job) for job in scheduler.waiting]
        looked.set()
        head.result(timeout=60)
        got = [f.result(timeout=60) for f in futures]
    finally:
        runtime.unload()
    assert needs == want
    assert started == ["big", "a", "b"]  # the small ones never overtook the big one
    assert got[0].completion_tokens == room and got[0].finish_reason == "length"  # it used every cell
    assert [_key(g) for g in got] == [_key(alone_tiny.generate(r)) for r in (big, a, b)]


def test_a_request_needing_more_kv_cells_than_a_slot_has_is_refused_not_left_waiting(tiny_gguf: Path) -> None:
    runtime = _runtime(tiny_gguf, batch_sequences=1, cached_prefixes=0)
    scheduler = runtime._schedulers[0]
    try:
        tokens = runtime.prompt_tokens(GenerationRequest(prompt="the old cat"))
        too_big = Job(tokens, Sampling(max_tokens=300), None, scheduler.cells_per_slot - len(tokens) + 1)
        with pytest.raises(ContextOverflowError, match="needs 257 KV cells; a slot has 256"):
            scheduler.submit(too_big).result(timeout=30)
        after = runtime.submit(GenerationRequest(prompt="the old cat", sampling=Sampling(max_tokens=5)))
        assert after.result(timeout=30).completion_tokens == 5  # the queue goes on behind it
    finally:
        runtime.unload()


def test_a_short_prompt_is_not_held_behind_a_long_one(tiny_gguf: Path, alone_tiny: LlamaRuntime) -> None:
    """Prompt chunks share each step's budget: the short one's first token comes long before the other's."""
    runtime = _runtime(tiny_gguf, batch_sequences=2, cached_prefixes=0, n_batch=16)
    long = GenerationRequest(prompt=" ".join(["cat", "dog", "sun"] * 22), sampling=Sampling(max_tokens=1))
    short = GenerationRequest(prompt="the hill", sampling=Sampling(max_tokens=1, temperature=0.0))
    finished: list[str] = []
    try:
        assert len(runtime.prompt_tokens(long)) > 150  # about ten steps of 16 tokens alone
        first = runtime.submit(long)
        first.add_done_callback(lambda _: finished.append("long"))
        second = runtime.submit(short)
        second.add_done_callback(lambda _: finished.append("short"))
        got = second.result(timeout=30)
        first.result(timeout=30)
    finally:
        runtime.unload()
    assert finished == ["short", "long"]
    assert _key(got) == _key(alone_tiny.generate(short))


def test_common_prefix_counts_equal_leading_tokens() -> None:
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5] * 700 + [1], [5] * 700 + [2]) == 700
    assert common_prefix([1, 2], [1, 2]) == 2
