"""A tiny multilingual Whisper with random weights, written straight as a CTranslate2 model.

No trained multilingual Whisper can be had here (the trained tiny.en is
English-only), so language detection and translation are exercised on a model
of the real architecture: CTranslate2's own ``WhisperSpec`` filled with random
numpy weights (d_model 64, 2 + 2 layers, the real 51,865-token vocabulary
layout: byte tokens, ``""`` at 50256 which CTranslate2 takes as the mark of a
multilingual model, the special and 99 language tokens, 1,501 timestamps) and
a ``tokenizer.json`` with the same ids, so faster-whisper loads it exactly as
it loads a converted model. Its transcripts are noise; its output contract
and code paths are real. No torch or transformers needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ctranslate2.specs import whisper_spec
from faster_whisper.tokenizer import _LANGUAGE_CODES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel

D_MODEL, FFN, HEADS, N_MELS = 64, 128, 2, 80
VOCAB = 51_865
LANGUAGES = [code for code in _LANGUAGE_CODES if code != "yue"][:99]


def _vocabulary() -> list[str]:
    byte_chars = list(ByteLevel.alphabet())
    byte_chars.sort()
    tokens = byte_chars + [f"<|fill{i}|>" for i in range(50_256 - len(byte_chars))]
    tokens.append("")  # id 50256: CTranslate2 >= 4.7 reads it as "multilingual"
    tokens += ["<|endoftext|>", "<|startoftranscript|>"]
    tokens += [f"<|{code}|>" for code in LANGUAGES]
    tokens += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>"]
    tokens.append("<|notimestamps|>")
    tokens += [f"<|{i * 0.02:.2f}|>" for i in range(VOCAB - len(tokens))]
    assert len(tokens) == VOCAB and tokens[50256] == "" and tokens[50363] == "<|notimestamps|>"
    return tokens


def _shape(name: str, vocab: int) -> tuple[int, ...]:
    leaf = name.rsplit("/", 2)
    if name.startswith("encoder/conv1/"):
        return (D_MODEL, N_MELS, 3) if name.endswith("weight") else (D_MODEL,)
    if name.startswith("encoder/conv2/"):
        return (D_MODEL, D_MODEL, 3) if name.endswith("weight") else (D_MODEL,)
    if name == "encoder/position_encodings/encodings":
        return (1500, D_MODEL)
    if name == "decoder/position_encodings/encodings":
        return (448, D_MODEL)
    if name in ("decoder/embeddings/weight", "decoder/projection/weight"):
        return (vocab, D_MODEL)
    if leaf[-1] in ("gamma", "beta"):
        return (D_MODEL,)
    out_dim = {
        "self_attention/linear_0": 3 * D_MODEL,
        "attention/linear_1": 2 * D_MODEL,
        "ffn/linear_0": FFN,
    }.get(f"{leaf[0].rsplit('/', 1)[-1]}/{leaf[1]}", D_MODEL)
    in_dim = FFN if f"{leaf[0].rsplit('/', 1)[-1]}/{leaf[1]}" == "ffn/linear_1" else D_MODEL
    return (out_dim, in_dim) if leaf[-1] == "weight" else (out_dim,)


def _child(owner: object, part: str) -> object:
    """``layer_1`` and ``linear_0`` name items of the spec's lists ``layer`` and ``linear``."""
    base, _, index = part.rpartition("_")
    if index.isdigit() and isinstance(getattr(owner, base, None), list):
        return getattr(owner, base)[int(index)]
    return getattr(owner, part)


def build_random_multilingual_whisper(directory: Path, seed: int = 0) -> Path:
    """Write model.bin, config.json, vocabulary.json and tokenizer.json into ``directory``."""
    rng = np.random.default_rng(seed)
    tokens = _vocabulary()
    spec = whisper_spec.WhisperSpec(2, HEADS, 2, HEADS)
    unset: list[str] = []
    spec._visit(lambda _s, name, value: unset.append(name) if value is None else None)
    for name in unset:
        owner = spec
        *path, attr = name.split("/")
        for part in path:
            owner = _child(owner, part)
        shape = _shape(name, len(tokens))
        value = (
            np.ones(shape, np.float32) if attr == "gamma" else rng.normal(0, 0.2, shape).astype(np.float32)
        )
        setattr(owner, attr, np.zeros(shape, np.float32) if attr == "beta" else value)
    for name in ("conv1", "conv2"):
        getattr(spec.encoder, name).bias = rng.normal(0, 0.02, (D_MODEL,)).astype(np.float32)
    spec.encoder.position_encodings.encodings = _sinusoids(1500, D_MODEL)
    spec.decoder.position_encodings.encodings = rng.normal(0, 0.02, (448, D_MODEL)).astype(np.float32)
    spec.decoder.projection.weight = spec.decoder.embeddings.weight  # tied, as in Whisper
    # Random weights would ramble for 448 tokens and through every fallback temperature;
    # a bias towards <|endoftext|> ends each segment after a token or two (tests stay fast).
    bias = np.zeros(len(tokens), np.float32)
    bias[50257] = 30.0
    spec.decoder.projection.bias = bias
    spec.register_vocabulary(tokens)
    spec.config.suppress_ids = [50257 + 1 + len(LANGUAGES) + i for i in range(2, 5)]
    spec.config.suppress_ids_begin = [220, 50257]
    spec.config.lang_ids = list(range(50259, 50259 + len(LANGUAGES)))
    spec.config.alignment_heads = [(1, 0), (1, 1)]
    spec.validate()
    spec.optimize(quantization="int8")
    directory.mkdir(parents=True, exist_ok=True)
    spec.save(str(directory))
    _tokenizer(tokens).save(str(directory / "tokenizer.json"))
    (directory / "preprocessor_config.json").write_text(json.dumps({"feature_size": N_MELS}))
    return directory


def _sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's fixed encoder position embedding."""
    increment = np.log(10_000) / (channels // 2 - 1)
    inv = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def _tokenizer(tokens: list[str]) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(tokens) if tok}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([t for t in tokens[50257:50364]])
    return tokenizer
