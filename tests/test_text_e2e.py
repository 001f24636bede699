"""Text requests end to end through the real broker: generate, chat, stream, embed, classify."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("llama_cpp")

from altlas.orchestration.clients.client import AltlasClient, TopicReader, make_request
from altlas.schemas.types import (
    Classification,
    Embedding,
    ResultStatus,
    TextChunk,
    TextGeneration,
    TextResult,
)
from tests.conftest import connect, isolated_settings, serving
from tests.fixtures_text import text_registry_doc


@pytest.fixture
async def text_client(
    kafka_bootstrap: str,
    tmp_path: Path,
    tiny_gguf: Path,
    smollm2_gguf: Path,
    minilm_dir: Path,
    bow_classifier: Path,
) -> AsyncIterator[AltlasClient]:
    """An orchestrator serving only text, with every text model registered, and a client."""
    registry = tmp_path / "models.yaml"
    registry.write_text(
        yaml.safe_dump(text_registry_doc(tiny_gguf, smollm2_gguf, minilm_dir, bow_classifier))
    )
    settings = isolated_settings(kafka_bootstrap, registry, modalities=["text"])
    async with serving(settings), connect(settings) as client:
        yield client


async def _all_records(
    client: AltlasClient, reader: TopicReader, request_id: str, timeout_s: float = 60
) -> list[TextResult]:
    """Every result record of one request, partial ones included, until its final one."""
    seen: list[TextResult] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rec in await reader.read(0.5):
            result = client.codec.decode_record(rec.value, TextResult)
            if result.request_id == request_id:
                seen.append(result)
        if seen and seen[-1].status is not ResultStatus.PARTIAL:
            return seen
    raise AssertionError(f"no final result for {request_id}; got {len(seen)} records")


async def test_generate_chat_embed_and_classify_answer_through_the_broker(text_client: AltlasClient) -> None:
    client = text_client
    requests = {
        "exact": make_request(
            "text", "generate", "the cat", model="tiny", params={"max_tokens": 9, "temperature": 0}
        ),
        "paris": make_request(
            "text", "generate", "The capital of France is", params={"max_tokens": 4, "temperature": 0}
        ),
        "chat": make_request(
            "text",
            "chat",
            json.dumps([{"role": "user", "content": "What is 2+2?"}]),
            params={"max_tokens": 40, "temperature": 0},
        ),
        "guitar": make_request("text", "embed", "A man is playing a guitar.", model="minilm"),
        "music": make_request("text", "embed", "Someone is playing an instrument.", model="minilm"),
        "market": make_request("text", "embed", "The stock market fell sharply today.", model="minilm"),
        "topic": make_request(
            "text", "classify", "rain and snow and wind", model="topics", params={"top_k": 2}
        ),
    }
    ids = {name: req.request_id for name, req in requests.items()}
    async with client.reader(client.topics.results("text")) as reader:
        await client.send_many(requests.values())
        got = await client.collect(reader, "text", ids.values(), timeout_s=120)
    results = {name: got[rid] for name, rid in ids.items()}
    for name, result in results.items():
        assert result.status is ResultStatus.OK, (name, result.error)

    exact = results["exact"].output
    assert (
        isinstance(exact, TextGeneration) and exact.completion_tokens == 9 and exact.finish_reason == "length"
    )
    assert exact.prompt_tokens == 7 and exact.tokens_per_second > 0
    paris = results["paris"].output
    assert isinstance(paris, TextGeneration) and paris.text.startswith(" Paris")
    assert results["paris"].model_id == "smollm2"  # the registry default for text.generate
    chat = results["chat"].output
    assert isinstance(chat, TextGeneration) and "4" in chat.text and chat.finish_reason == "stop"

    vectors = {}
    for name in ("guitar", "music", "market"):
        out = results[name].output
        assert isinstance(out, Embedding) and out.dim == 384
        vectors[name] = np.array(out.vector)
    assert vectors["guitar"] @ vectors["music"] > 0.5 > vectors["guitar"] @ vectors["market"] + 0.3
    topic = results["topic"].output
    assert isinstance(topic, Classification) and topic.labels[0].label == "weather" and len(topic.labels) == 2


async def test_a_burst_of_requests_decodes_together_and_matches_one_at_a_time(
    text_client: AltlasClient, tiny_gguf: Path
) -> None:
    from altlas.models.llama import LlamaRuntime
    from altlas.models.llama_text import GenerationRequest, Sampling
    from altlas.models.registry import ModelRegistry

    prompts = ["the cat", "a big dog", "red sky", "one two", "the river", "hello world"]
    params = {"max_tokens": 12, "temperature": 0.9, "seed": 5, "cache": False}
    client = text_client
    requests = [make_request("text", "generate", p, model="tiny", params=params) for p in prompts]
    async with client.reader(client.topics.results("text")) as reader:
        await client.send_many(requests)
        got = await client.collect(reader, "text", [r.request_id for r in requests], timeout_s=60)

    spec = ModelRegistry.from_dict(
        {"models": [{"id": "t", "task": "text.generate", "backend": "llama.cpp", "path": str(tiny_gguf)}]}
    ).get("t")
    alone = LlamaRuntime(spec)
    alone.load()
    try:
        sampling = Sampling(max_tokens=12, temperature=0.9, seed=5)
        want = [alone.generate(GenerationRequest(prompt=p, sampling=sampling)).text for p in prompts]
    finally:
        alone.unload()
    outputs = [got[r.request_id].output for r in requests]
    assert all(isinstance(o, TextGeneration) for o in outputs)
    assert [o.text for o in outputs] == want  # type: ignore[union-attr]
    assert max(got[r.request_id].timings.batch_size for r in requests) > 1


async def test_a_streamed_generation_publishes_numbered_chunks_then_the_final_text(
    text_client: AltlasClient,
) -> None:
    client = text_client
    request = make_request(
        "text", "generate", "Once upon a time", params={"max_tokens": 32, "temperature": 0, "stream": True}
    )
    async with client.reader(client.topics.results("text")) as reader:
        await client.send(request)
        records = await _all_records(client, reader, request.request_id)
    *partials, final = records
    assert final.status is ResultStatus.OK and isinstance(final.output, TextGeneration)
    assert final.output.completion_tokens == 32
    assert len(partials) > 1 and all(r.status is ResultStatus.PARTIAL for r in partials)
    chunks = [r.output for r in partials]
    assert all(isinstance(c, TextChunk) for c in chunks)
    ordered = sorted(chunks, key=lambda c: c.sequence)  # type: ignore[union-attr]
    assert [c.sequence for c in ordered] == list(range(len(ordered)))  # type: ignore[union-attr]
    assert "".join(c.text for c in ordered) == final.output.text  # type: ignore[union-attr]


async def test_a_replayed_request_with_a_seed_gets_the_same_sampled_text(text_client: AltlasClient) -> None:
    client = text_client
    params = {"max_tokens": 24, "temperature": 1.0, "seed": 7, "cache": False}
    texts = []
    for _ in range(2):
        result = await client.request(
            make_request("text", "generate", "the red fox", model="tiny", params=params)
        )
        assert result is not None and result.status is ResultStatus.OK, result
        assert isinstance(result.output, TextGeneration) and "cache" not in result.attributes
        texts.append(result.output.text)
    assert texts[0] == texts[1] and len(texts[0]) > 0


async def test_a_request_without_params_samples_and_is_never_answered_from_the_cache(
    text_client: AltlasClient,
) -> None:
    """No params means temperature 0.8 and a random seed: a repeat must sample again, not replay."""
    texts, attributes = [], []
    for _ in range(3):
        result = await text_client.request(
            make_request("text", "generate", "the old fox and the", model="tiny", params={"max_tokens": 24})
        )
        assert result is not None and result.status is ResultStatus.OK, result
        assert isinstance(result.output, TextGeneration)
        texts.append(result.output.text)
        attributes.append(result.attributes)
    assert all("cache" not in a for a in attributes)
    assert len(set(texts)) > 1  # 24 sampled tokens of a 506-token vocabulary: three equal draws is no sample


@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 1.0, "seed": 3}])
async def test_a_deterministic_request_is_answered_from_the_cache_when_repeated(
    text_client: AltlasClient, params: dict[str, object]
) -> None:
    request_params = {"max_tokens": 16, **params}
    first = await text_client.request(
        make_request("text", "generate", "a cached cat", model="tiny", params=request_params)
    )
    again = await text_client.request(
        make_request("text", "generate", "a cached cat", model="tiny", params=request_params)
    )
    assert first is not None and again is not None
    assert isinstance(first.output, TextGeneration) and isinstance(again.output, TextGeneration)
    assert "cache" not in first.attributes and "cache" in again.attributes
    assert again.output.text == first.output.text
    # The generation's own figures travel as attributes (and feed the Prometheus histograms).
    assert float(first.attributes["time_to_first_token_ms"]) > 0
    assert float(first.attributes["tokens_per_second"]) > 0


async def test_a_generation_past_its_time_budget_answers_with_the_text_it_had(
    text_client: AltlasClient,
) -> None:
    params = {"max_tokens": 1500, "temperature": 0, "timeout_ms": 6000}
    result = await text_client.request(make_request("text", "generate", "Once upon a time", params=params))
    assert result is not None and result.status is ResultStatus.ERROR and result.error is not None
    assert result.error.code == "DEADLINE_EXCEEDED"
    assert 1 <= int(result.attributes["completion_tokens"]) < 1500
    assert result.attributes["partial_text"].strip()


async def test_a_prompt_beyond_the_context_gets_an_error_result_and_a_dead_letter(
    text_client: AltlasClient,
) -> None:
    client = text_client
    request = make_request("text", "generate", " ".join(["is"] * 400), model="tiny", params={"max_tokens": 4})
    async with client.reader(client.topics.dead_letter) as dlq:
        result = await client.request(request)
        letters = [client.decode_dead_letter(r.value) for r in await dlq.read(5)]
    assert result is not None and result.status is ResultStatus.ERROR and result.error is not None
    assert result.error.code == "PAYLOAD_TOO_LARGE"
    assert "prompt is 401 tokens" in result.error.message and "context of 256" in result.error.message
    assert [d.request_id for d in letters] == [request.request_id]


async def test_bad_chat_json_and_bad_params_get_clear_error_codes(text_client: AltlasClient) -> None:
    client = text_client
    bad_chat = make_request("text", "chat", '[{"role": "robot", "content": "hi"}]', model="tiny")
    bad_params = make_request("text", "generate", "hello", model="tiny", params={"temperature": -1.0})
    async with client.reader(client.topics.results("text")) as reader:
        await client.send_many([bad_chat, bad_params])
        got = await client.collect(reader, "text", [bad_chat.request_id, bad_params.request_id], timeout_s=30)
    assert (
        got[bad_chat.request_id].error is not None
        and got[bad_chat.request_id].error.code == "INVALID_PAYLOAD"
    )
    assert (
        got[bad_params.request_id].error is not None
        and got[bad_params.request_id].error.code == "INVALID_PARAMS"
    )
