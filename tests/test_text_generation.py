"""llama.cpp generation without a broker: real GGUF models through the runtime and pipelines.

The tiny random model gives exact checks (length, stop, seed, context limit);
SmolLM2-135M-Instruct, a trained model, must give real answers.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from altlas.models.errors import ModelLoadError
from altlas.models.llama import LlamaRuntime
from altlas.models.llama_text import (
    ChatTemplateError,
    ContextOverflowError,
    GenerationRequest,
    InvalidGrammarError,
    Sampling,
)
from altlas.pipelines.base import PipelineLimits
from altlas.pipelines.text_chat import TextChatPipeline
from altlas.pipelines.text_generation import TextGenerationPipeline
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError
from altlas.schemas.types import Record, TextChunk, TextGeneration
from tests.text_models import loaded_llama


def _runtime(path: Path, **params: Any) -> LlamaRuntime:
    return loaded_llama(path, **params)


@pytest.fixture(scope="module")
def tiny(tiny_gguf: Path) -> Iterator[LlamaRuntime]:
    runtime = _runtime(tiny_gguf, contexts=2)
    yield runtime
    runtime.unload()


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path) -> Iterator[LlamaRuntime]:
    runtime = _runtime(smollm2_gguf, n_ctx=1024)
    yield runtime
    runtime.unload()


def _greedy(max_tokens: int, **kw: Any) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, **kw)


# ---------------------------------------------------------------- exact behaviour (tiny model)
def test_generation_produces_exactly_max_tokens_and_counts_the_prompt(tiny: LlamaRuntime) -> None:
    request = GenerationRequest(prompt="the cat is on the hill", sampling=_greedy(17))
    result = tiny.generate(request)
    assert result.completion_tokens == 17
    assert result.finish_reason == "length"
    assert result.prompt_tokens == len(tiny.prompt_tokens(request)) == 16  # BOS + 15 pieces
    assert result.text.strip() and result.tokens_per_second > 0


def test_a_stop_sequence_ends_the_text_just_before_it(tiny: LlamaRuntime) -> None:
    full = tiny.generate(GenerationRequest(prompt="one two three", sampling=_greedy(24))).text
    words = full.split()
    stop = " " + words[len(words) // 2]  # a word from the middle of the greedy text
    cut = full.index(stop)
    result = tiny.generate(
        GenerationRequest(prompt="one two three", sampling=_greedy(24, stop=(stop, "§never§")))
    )
    assert result.text == full[:cut]
    assert result.finish_reason == "stop"
    assert result.completion_tokens < 24


def test_the_same_seed_reproduces_sampled_text_on_any_context(tiny: LlamaRuntime) -> None:
    def sample(seed: int) -> str:
        sampling = Sampling(max_tokens=24, temperature=1.2, seed=seed)
        return tiny.generate(GenerationRequest(prompt="the red fox", sampling=sampling)).text

    first = sample(42)
    tiny.generate(GenerationRequest(prompt="something else entirely", sampling=_greedy(30)))
    # Two threads at once take both contexts of the pool: each must still reproduce.
    again: list[str] = []
    threads = [threading.Thread(target=lambda: again.append(sample(42))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert again == [first, first]
    assert sample(43) != first


def test_streamed_pieces_concatenate_to_the_final_text(tiny: LlamaRuntime) -> None:
    pieces: list[str] = []
    full = tiny.generate(GenerationRequest(prompt="hello world", sampling=_greedy(20))).text
    stop = full.split()[-3]  # also exercises holding back a possible stop prefix
    result = tiny.generate(
        GenerationRequest(prompt="hello world", sampling=_greedy(20, stop=(stop,))), pieces.append
    )
    assert len(pieces) > 1
    assert "".join(pieces) == result.text == full[: full.index(stop)]


def test_a_prompt_longer_than_the_context_is_rejected_not_truncated(tiny: LlamaRuntime) -> None:
    prompt = " ".join(["cat"] * 300)  # > 256 tokens, the tiny model's context
    with pytest.raises(
        ContextOverflowError, match=r"prompt is \d+ tokens; m@1 has a context of 256"
    ) as caught:
        tiny.generate(GenerationRequest(prompt=prompt, sampling=_greedy(4)))
    assert caught.value.code == ErrorCode.PAYLOAD_TOO_LARGE.value


def test_generation_near_the_context_end_stops_at_the_context(tiny: LlamaRuntime) -> None:
    request = GenerationRequest(prompt=" ".join(["is"] * 249), sampling=_greedy(50))
    assert len(tiny.prompt_tokens(request)) == 250  # BOS + 249 x "▁is": room for 6 more
    result = tiny.generate(request)
    assert result.prompt_tokens + result.completion_tokens == 256
    assert result.finish_reason == "length"


def test_a_batch_keeps_a_failing_item_in_its_own_slot(tiny: LlamaRuntime) -> None:
    items = [
        GenerationRequest(prompt="the cat", sampling=_greedy(3)),
        GenerationRequest(prompt=" ".join(["dog"] * 400), sampling=_greedy(3)),
        GenerationRequest(prompt="the dog", sampling=_greedy(5)),
    ]
    out = tiny.predict_batch(items)
    assert [type(o).__name__ for o in out] == ["GenerationResult", "ContextOverflowError", "GenerationResult"]
    assert [o.completion_tokens for o in (out[0], out[2])] == [3, 5]


def test_batched_decoding_gives_the_same_texts_as_one_at_a_time(tiny_gguf: Path) -> None:
    one_by_one = _runtime(tiny_gguf, batch_sequences=1)
    batched = _runtime(tiny_gguf, batch_sequences=4)
    greedy_text = one_by_one.generate(GenerationRequest(prompt="a big red house", sampling=_greedy(20))).text
    requests = [
        GenerationRequest(prompt="a big red house", sampling=_greedy(20)),
        GenerationRequest(prompt="the cat", sampling=Sampling(max_tokens=30, temperature=1.0, seed=11)),
        GenerationRequest(prompt="a big red house", sampling=_greedy(20, stop=(greedy_text.split()[4],))),
        GenerationRequest(prompt="one", sampling=_greedy(7)),
        GenerationRequest(
            prompt="the dog", sampling=Sampling(max_tokens=25, temperature=0.7, top_k=5, seed=3)
        ),
        GenerationRequest(prompt="x", sampling=_greedy(3, grammar='root ::= " sky" " sky" " sky"')),
    ]
    try:
        want = one_by_one.predict_batch(requests)
        got = batched.predict_batch(requests)
    finally:
        one_by_one.unload()
        batched.unload()
    assert [(g.text, g.finish_reason, g.completion_tokens) for g in got] == [
        (w.text, w.finish_reason, w.completion_tokens) for w in want
    ]
    assert [w.completion_tokens for w in want][3] == 7 and want[2].finish_reason == "stop"
    assert want[5].text == " sky sky sky"


def test_chat_renders_the_template_from_the_gguf(tiny: LlamaRuntime) -> None:
    request = GenerationRequest(messages=({"role": "user", "content": "hello"},), sampling=_greedy(3))
    rendered = "<user> hello </user>\n<assistant>"
    from llama_cpp import Llama

    assert isinstance(tiny._contexts[0], Llama)
    expected = tiny._contexts[0].tokenize(rendered.encode(), add_bos=False, special=True)
    assert tiny.prompt_tokens(request) == expected
    assert tiny.generate(request).completion_tokens == 3


def test_chat_on_a_model_without_a_template_says_so(tiny_gguf: Path, tmp_path: Path) -> None:
    from tests.text_models import tiny_llama_gguf

    runtime = _runtime(tiny_llama_gguf(tmp_path / "plain.gguf", chat_template=None))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        runtime.generate(GenerationRequest(messages=({"role": "user", "content": "hi"},)))
    runtime.unload()


def test_an_unparsable_grammar_is_an_invalid_params_error(tiny: LlamaRuntime) -> None:
    with pytest.raises(InvalidGrammarError) as caught:
        tiny.generate(GenerationRequest(prompt="the cat", sampling=_greedy(3, grammar='root ::= "a" [')))
    assert caught.value.code == ErrorCode.INVALID_PARAMS.value


def test_a_file_that_is_not_gguf_fails_to_load_with_the_reason(text_models_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        _runtime(text_models_dir / "not-a-model.gguf")


def test_a_truncated_gguf_fails_to_load_with_llama_cpps_reason(text_models_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"llama\.cpp cannot load .*truncated\.gguf: .*\S") as caught:
        _runtime(text_models_dir / "truncated.gguf")
    assert "Failed to load model" not in str(caught.value)  # llama.cpp's own reason, not the binding's


# ---------------------------------------------------------------- trained model (SmolLM2-135M-Instruct)
def test_trained_model_completes_the_capital_of_france(smol: LlamaRuntime) -> None:
    result = smol.generate(GenerationRequest(prompt="The capital of France is", sampling=_greedy(4)))
    assert result.text.startswith(" Paris")


def test_trained_model_answers_a_chat_question(smol: LlamaRuntime) -> None:
    messages = ({"role": "user", "content": "What is 2+2?"},)
    result = smol.generate(GenerationRequest(messages=messages, sampling=_greedy(40)))
    assert "4" in result.text
    assert result.finish_reason == "stop"  # the model ended its turn itself


def test_json_schema_constrains_the_trained_model_to_parseable_json(smol: LlamaRuntime) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    pipeline = TextChatPipeline()
    prepared = pipeline.prepare(
        json.dumps([{"role": "user", "content": "What is the capital of France? Answer in JSON."}]),
        {"json_schema": json.dumps(schema), "temperature": 0.0, "max_tokens": 60},
        smol.spec,
    )
    (out,) = pipeline.run(smol, [prepared])
    assert isinstance(out, TextGeneration)
    doc = json.loads(out.text)
    assert set(doc) == {"city", "country"}
    assert doc["city"] == "Paris"


def test_the_pipeline_streams_numbered_chunks_from_the_trained_model(smol: LlamaRuntime) -> None:
    pipeline = TextGenerationPipeline()
    prepared = pipeline.prepare(
        "Once upon a time", {"max_tokens": 24, "temperature": 0, "stream": True}, smol.spec
    )
    chunks: list[Record] = []
    final = pipeline.run_stream(smol, prepared, chunks.append)
    assert isinstance(final, TextGeneration) and final.completion_tokens == 24
    assert all(isinstance(c, TextChunk) for c in chunks)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))  # type: ignore[attr-defined]
    assert "".join(c.text for c in chunks) == final.text  # type: ignore[attr-defined]


# ---------------------------------------------------------------- request validation (no model)
@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 0},
        {"max_tokens": "many"},
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"top_p": 1.5},
        {"seed": -1},
        {"seed": "x"},
        {"stop": [""]},
        {"stop": [str(i) for i in range(17)]},
        {"stream": "yes"},
        {"grammar": "root ::= x", "json_schema": "{}"},
        {"json_schema": "{not json"},
        {"json_schema": 3},
    ],
)
def test_bad_params_are_rejected_before_the_model(tiny: LlamaRuntime, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        TextGenerationPipeline().prepare("hello", params, tiny.spec)
    assert caught.value.code is ErrorCode.INVALID_PARAMS


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("not json", "not JSON"),
        ('{"role": "user", "content": "hi"}', "non-empty JSON array"),
        ("[]", "non-empty JSON array"),
        ('[{"role": "wizard", "content": "hi"}]', "role 'wizard'"),
        ('[{"role": "user"}]', "string content"),
        ('["hi"]', "not an object"),
    ],
)
def test_bad_chat_payloads_are_invalid_payloads(tiny: LlamaRuntime, payload: str, reason: str) -> None:
    with pytest.raises(InvalidRequestError, match=reason) as caught:
        TextChatPipeline().prepare(payload, {}, tiny.spec)
    assert caught.value.code is ErrorCode.INVALID_PAYLOAD


def test_text_over_the_character_limit_is_too_large(tiny: LlamaRuntime) -> None:
    with pytest.raises(PayloadTooLargeError):
        TextGenerationPipeline(PipelineLimits(max_text_chars=10)).prepare("x" * 11, {}, tiny.spec)


def test_the_deployment_prompt_token_cap_applies_below_the_context(tiny: LlamaRuntime) -> None:
    pipeline = TextGenerationPipeline(PipelineLimits(max_prompt_tokens=8))
    prepared = pipeline.prepare("the cat is on the hill", {"max_tokens": 2}, tiny.spec)
    (out,) = pipeline.run(tiny, [prepared])
    assert isinstance(out, ContextOverflowError) and "limit is 8" in str(out)


def test_the_runtime_loads_and_generates_with_the_network_closed(
    tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    runtime = _runtime(tiny_gguf)
    try:
        assert (
            runtime.generate(GenerationRequest(prompt="the cat", sampling=_greedy(4))).completion_tokens == 4
        )
    finally:
        runtime.unload()


def test_gpu_layers_auto_offloads_everything_only_on_a_build_that_can(tiny: LlamaRuntime) -> None:
    from altlas.models.llama import gpu_offload_supported

    assert tiny.n_gpu_layers == (-1 if gpu_offload_supported() else 0)


def test_a_generation_past_its_deadline_stops_and_frees_its_context(smollm2_gguf: Path) -> None:
    """A timed-out request must not keep generating to its max_tokens: the next one would wait behind it."""
    import time

    from altlas.models.errors import GenerationCancelled

    for sequences in (1, 2):
        runtime = _runtime(smollm2_gguf, n_ctx=1024, batch_sequences=sequences)
        try:
            whole = runtime.generate(GenerationRequest(prompt="Once upon a time", sampling=_greedy(24)))
            started = time.perf_counter()
            cut = GenerationRequest(
                prompt="Once upon a time",
                sampling=_greedy(1000),
                deadline=time.monotonic() + whole.seconds / 3,
            )
            alone = GenerationRequest(prompt="Once upon a time", sampling=_greedy(24))
            out = runtime.predict_batch([cut, alone])
            assert isinstance(out[0], GenerationCancelled)
            assert out[1].text == whole.text  # its neighbour is unaffected, batched or not
            # 1000 tokens would take ~40x as long as 24; it stopped within a few tokens of its deadline.
            assert time.perf_counter() - started < whole.seconds * 4
            late = GenerationRequest(prompt="x", sampling=_greedy(5), deadline=time.monotonic() - 1)
            assert isinstance(runtime.predict_batch([late])[0], GenerationCancelled)
        finally:
            runtime.unload()
