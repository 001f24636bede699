"""Text embeddings and classification on ONNX Runtime, with the real MiniLM encoder.

The ONNX graph is built here from the trained all-MiniLM-L6-v2 weights
(tests/minilm_onnx.py), so it is first checked against a plain numpy forward
pass written independently below; then the pipeline must find similar
sentences closer than unrelated ones.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tokenizers")

from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelRegistry
from altlas.pipelines.base import PipelineLimits
from altlas.pipelines.text_classification import TextClassificationPipeline
from altlas.pipelines.text_embedding import TextEmbeddingPipeline
from altlas.schemas.errors import PayloadTooLargeError
from altlas.schemas.types import Classification, Embedding
from tests.fixtures_text import BOW_LABELS


def _onnx(path: Path, task: str, **params: Any) -> OnnxRuntime:
    spec = ModelRegistry.from_dict(
        {"models": [{"id": "m", "task": task, "backend": "onnx", "path": str(path), "params": params}]}
    ).get("m")
    runtime = OnnxRuntime(spec)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> Iterator[OnnxRuntime]:
    runtime = _onnx(minilm_dir / "model.onnx", "text.embed", max_length=256)
    yield runtime
    runtime.unload()


def _embed(
    runtime: OnnxRuntime, texts: Sequence[str], pipeline: TextEmbeddingPipeline | None = None
) -> np.ndarray:
    pipeline = pipeline or TextEmbeddingPipeline()
    outs = pipeline.run(runtime, [pipeline.prepare(t, {}, runtime.spec) for t in texts])
    assert all(isinstance(o, Embedding) for o in outs), outs
    return np.array([o.vector for o in outs])  # type: ignore[union-attr]


# ---------------------------------------------------------------- an independent numpy BERT
def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * g + b


def _numpy_minilm(weights: dict[str, np.ndarray], ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Token vectors and the mean-pooled, normalised sentence vector of one unpadded text."""
    w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype != np.int64}
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    heads, d = 12, 32
    for i in range(6):
        p = f"encoder.layer.{i}."

        def lin(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            lin(x, f"attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        att = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = _layer_norm(
            x + lin(ctx, "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
        x = _layer_norm(
            x + lin(h, "output.dense"), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
        )
    mean = x.mean(0)
    return x, mean / np.linalg.norm(mean)


def test_the_onnx_export_matches_an_independent_numpy_forward_pass(
    minilm_dir: Path, minilm: OnnxRuntime
) -> None:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from tests.minilm_onnx import MINILM_WEIGHTS

    weights = load_file(str(MINILM_WEIGHTS.path()))
    tokenizer = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    texts = [
        "Kafka carries the requests.",
        "A much longer sentence, with punctuation, to check padding works!",
    ]
    ids = [tokenizer.encode(t).ids for t in texts]
    length = max(map(len, ids))
    feeds = [
        {
            "input_ids": np.array(i + [0] * (length - len(i))),
            "attention_mask": np.array([1] * len(i) + [0] * (length - len(i))),
            "token_type_ids": np.zeros(length, dtype=np.int64),
        }
        for i in ids
    ]
    outs = minilm.predict_batch(feeds)
    for i, out in zip(ids, outs, strict=True):
        tokens, sentence = _numpy_minilm(weights, i)
        np.testing.assert_allclose(out["token_embeddings"][: len(i)], tokens, atol=2e-4)
        np.testing.assert_allclose(out["sentence_embedding"], sentence, atol=2e-5)


# ---------------------------------------------------------------- embed pipeline
def test_similar_sentences_score_higher_than_unrelated_ones(minilm: OnnxRuntime) -> None:
    vectors = _embed(
        minilm,
        [
            "A man is playing a guitar.",
            "Someone is playing an instrument.",
            "The stock market fell sharply today.",
            "Share prices dropped on Wall Street.",
        ],
    )
    sims = vectors @ vectors.T
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors.shape == (4, 384)
    assert sims[0, 1] > 0.5 and sims[2, 3] > 0.5
    assert max(sims[0, 2], sims[0, 3], sims[1, 2], sims[1, 3]) < 0.2


def test_a_padded_batch_embeds_each_text_as_if_alone(minilm: OnnxRuntime) -> None:
    texts = ["short", "a somewhat longer sentence that needs padding around the short one", "mid length text"]
    batched = _embed(minilm, texts)
    alone = np.vstack([_embed(minilm, [t]) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_the_token_count_is_reported(minilm: OnnxRuntime) -> None:
    pipeline = TextEmbeddingPipeline()
    (out,) = pipeline.run(minilm, [pipeline.prepare("hello world", {}, minilm.spec)])
    assert isinstance(out, Embedding) and out.prompt_tokens == 4 and out.dim == 384  # [CLS] hello world [SEP]


def test_token_vectors_are_pooled_here_when_the_model_has_no_sentence_output(
    minilm_dir: Path, minilm: OnnxRuntime
) -> None:
    pooled_here = _onnx(minilm_dir / "model.onnx", "text.embed", output="token_embeddings")
    texts = ["the cat sat", "on the mat, quietly"]
    np.testing.assert_allclose(_embed(pooled_here, texts), _embed(minilm, texts), atol=1e-5)


def test_a_text_longer_than_the_model_takes_is_rejected_not_cut(minilm: OnnxRuntime) -> None:
    with pytest.raises(PayloadTooLargeError, match=r"text is 302 tokens; m@1 takes at most 256"):
        TextEmbeddingPipeline().prepare("word " * 300, {}, minilm.spec)


def test_embedding_needs_no_network(minilm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    runtime = _onnx(minilm_dir / "model.onnx", "text.embed")
    assert _embed(runtime, ["offline is fine"], TextEmbeddingPipeline()).shape == (1, 384)


# ---------------------------------------------------------------- classify pipeline (exact values)
def test_classification_scores_are_the_softmax_of_word_counts(bow_classifier: Path) -> None:
    runtime = _onnx(bow_classifier, "text.classify", labels_metadata_key="labels")
    pipeline = TextClassificationPipeline()
    texts = [
        "the cat and the dog ate bread in the rain",
        "snow, wind and rain all day",
        "nothing relevant here",
    ]
    outs = pipeline.run(runtime, [pipeline.prepare(t, {"top_k": 3}, runtime.spec) for t in texts])
    labels = list(BOW_LABELS)
    for text, out in zip(texts, outs, strict=True):
        assert isinstance(out, Classification)
        words = text.replace(",", " ").split()
        counts = np.array(
            [sum(words.count(w) for w in BOW_LABELS[label]) for label in labels], dtype=np.float64
        )
        want = np.exp(counts - counts.max()) / np.exp(counts - counts.max()).sum()
        got = {lab.label: lab.score for lab in out.labels}
        assert np.allclose([got[label] for label in labels], want, atol=1e-6)
        assert out.labels[0].label == labels[int(np.argmax(counts))] or counts.max() == counts.min()
    assert outs[1].labels[0].label == "weather"  # type: ignore[union-attr]


def test_top_k_limits_the_labels(bow_classifier: Path) -> None:
    runtime = _onnx(bow_classifier, "text.classify", labels_metadata_key="labels")
    pipeline = TextClassificationPipeline(PipelineLimits())
    (out,) = pipeline.run(runtime, [pipeline.prepare("cheese and apple soup", {"top_k": 1}, runtime.spec)])
    assert isinstance(out, Classification) and [lab.label for lab in out.labels] == ["food"]
