"""A hostile tenant's text and chat requests on their way to the model: refused cheaply, as its fault.

The prompt is rendered and tokenized on the model lane's single inference
thread, so a prompt that costs seconds there delays every other request to
the model; and a request's own fault must not count as a model failure,
which would open the model's circuit for every tenant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from altlas.models import llama_prompt
from altlas.models.llama import LlamaRuntime
from altlas.models.llama_text import ContextOverflowError, GenerationRequest, PromptBound, Sampling
from altlas.orchestration.routing.health import MODEL_SIDE, error_code
from altlas.pipelines.text_chat import TextChatPipeline
from altlas.schemas.errors import InvalidRequestError
from tests.text_models import loaded_llama

#: Mistral's template: it refuses roles that do not alternate user/assistant.
ALTERNATING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endfor %}"
)


def _runtime(smollm2_gguf: Path, **params: object) -> LlamaRuntime:
    return loaded_llama(smollm2_gguf, n_ctx=512, batch_sequences=2, contexts=1, **params)


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path) -> Iterator[LlamaRuntime]:
    runtime = _runtime(smollm2_gguf)
    yield runtime
    runtime.unload()


@pytest.fixture
def no_tokenizer(smol: LlamaRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokenizer must not be reached (it would take seconds on these prompts)."""

    def refuse(*args: object, **kwargs: object) -> list[int]:
        raise AssertionError("tokenized a prompt that cannot fit")

    monkeypatch.setattr(smol._contexts[0], "tokenize", refuse)


def _greedy(max_tokens: int = 2) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0)


@pytest.mark.usefixtures("no_tokenizer")
@pytest.mark.parametrize("piece", ["<|im_start|>x", "<|im_end|>", "<|endoftext|>\n"])
def test_a_prompt_of_special_token_strings_is_refused_before_tokenizing(
    smol: LlamaRuntime, piece: str
) -> None:
    # 15 000 special tokens in 200 kB: llama.cpp's split alone took 6 s on the lane's thread.
    prompt = piece * (195_000 // len(piece))
    with pytest.raises(ContextOverflowError, match="at least") as caught:
        smol.generate(GenerationRequest(prompt=prompt, sampling=_greedy()))
    assert caught.value.code == "PAYLOAD_TOO_LARGE"


@pytest.mark.usefixtures("no_tokenizer")
def test_a_chat_full_of_special_token_strings_is_refused_before_tokenizing(smol: LlamaRuntime) -> None:
    messages = ({"role": "user", "content": "<|im_start|>x" * 1200},)
    with pytest.raises(ContextOverflowError):
        smol.generate(GenerationRequest(messages=messages, sampling=_greedy()))


@pytest.mark.usefixtures("no_tokenizer")
def test_a_prompt_too_many_bytes_for_the_context_is_refused_before_tokenizing(smol: LlamaRuntime) -> None:
    with pytest.raises(ContextOverflowError):
        smol.generate(GenerationRequest(prompt="a" * 200_000, sampling=_greedy()))


@pytest.mark.usefixtures("no_tokenizer")
def test_the_deployment_prompt_cap_is_applied_before_tokenizing(smol: LlamaRuntime) -> None:
    request = GenerationRequest(prompt="<|im_end|>" * 200, sampling=_greedy(), max_prompt_tokens=100)
    with pytest.raises(ContextOverflowError, match="max_prompt_tokens 100"):
        smol.generate(request)


@pytest.mark.parametrize("prompt", ["<|im_start|>x" * 200, "<|im_end|>" * 510, "a" * 2000, "Hello there"])
def test_prompts_that_fit_are_tokenized_as_before(smol: LlamaRuntime, prompt: str) -> None:
    tokens = smol._contexts[0].tokenize(prompt.encode(), add_bos=True, special=True)
    assert smol._prompts.bound.min_tokens(prompt) <= len(tokens)
    result = smol.generate(GenerationRequest(prompt=prompt, sampling=_greedy(1)))
    assert result.prompt_tokens == len(tokens)


def test_the_bound_never_exceeds_the_real_count_on_varied_text(smol: LlamaRuntime) -> None:
    samples = ["", " " * 3000, "漢字" * 500, "😀" * 400, "<|im_start|><|im_start|>", "<<|im_end|>>" * 50]
    samples.append("\n".join(f"line {i}: <file_sep>{'z' * i}" for i in range(100)))
    for text in samples:
        real = len(smol._contexts[0].tokenize(text.encode(), add_bos=False, special=True))
        assert smol._prompts.bound.min_tokens(text) <= real, text[:40]


def test_overlapping_special_strings_weaken_the_bound_instead_of_overcounting() -> None:
    bound = PromptBound(100, ["<a>", "a><a"])  # an occurrence of one can straddle the other
    assert bound.min_tokens("<a><a><a>") <= 2  # whatever llama.cpp takes first, a few tokens
    assert PromptBound(4, ["<a>", "<b>"]).min_tokens("<a><b>" * 10) == 20


def test_a_lone_surrogate_in_chat_content_is_an_invalid_payload(smol: LlamaRuntime) -> None:
    payload = json.dumps([{"role": "user", "content": "hi \ud800"}])  # JSON writes it as an escape
    with pytest.raises(InvalidRequestError, match="message 0 content is not valid Unicode"):
        TextChatPipeline().prepare(payload, {}, smol.spec)


def test_a_lone_surrogate_reaching_the_runtime_is_the_requests_fault(smol: LlamaRuntime) -> None:
    # Before: submit raised UnicodeEncodeError on the lane's thread, answered MODEL_FAILED.
    generation = smol.submit(GenerationRequest(prompt="hi \udfff", sampling=_greedy()))
    exc = generation.exception(timeout=10)
    assert exc is not None
    assert error_code(exc) == "INVALID_PAYLOAD"


def test_messages_the_template_refuses_do_not_count_against_the_model(smollm2_gguf: Path) -> None:
    runtime = _runtime(smollm2_gguf, chat_template=ALTERNATING_TEMPLATE)
    try:
        messages = ({"role": "assistant", "content": "I speak first"},)
        exc = runtime.submit(GenerationRequest(messages=messages, sampling=_greedy())).exception(timeout=10)
        assert exc is not None
        assert "must alternate" in str(exc)
        assert error_code(exc) == "INVALID_PAYLOAD"
        assert error_code(exc) not in MODEL_SIDE  # five of these in a row would open the circuit
        fine = ({"role": "user", "content": "Hi"},)
        assert runtime.generate(GenerationRequest(messages=fine, sampling=_greedy(1))).completion_tokens == 1
    finally:
        runtime.unload()


@pytest.mark.usefixtures("no_tokenizer")
def test_a_prompt_that_fits_but_holds_too_many_special_token_strings_is_refused_untokenized(
    smol: LlamaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a large context such a prompt fits, and its quadratic split held the lane's thread
    # for seconds (8,000 strings: about 2 s). The cap is lowered to fit the test's small context.
    monkeypatch.setattr(llama_prompt, "MAX_SPECIAL_STRINGS", 100)
    request = GenerationRequest(prompt="<|im_end|>" * 101, sampling=_greedy())
    with pytest.raises(ContextOverflowError, match="101 special-token strings; at most 100"):
        smol.generate(request)


def test_a_chat_within_the_special_token_cap_is_served(
    smol: LlamaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llama_prompt, "MAX_SPECIAL_STRINGS", 100)
    messages = tuple({"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(31))
    result = smol.generate(GenerationRequest(messages=messages, sampling=_greedy(1)))
    assert result.completion_tokens == 1
