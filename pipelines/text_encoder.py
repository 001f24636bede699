"""Tokenising text for ONNX encoder models (embeddings, classifiers) and batching it.

The tokenizer is the model's ``tokenizer.json`` (Hugging Face ``tokenizers``),
read from disk next to the model file or from ``params.tokenizer``; nothing is
ever fetched (``HF_HUB_OFFLINE`` is set for the process as a second guard, and
a test runs this with the network closed). Texts longer than the model's
``params.max_length`` tokens are rejected, never cut. A batch is padded to its
longest item with an attention mask, so the ONNX backend runs it in one call.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.pipelines.base import PipelineLimits, model_param
from altlas.pipelines.text_generation import text_payload
from altlas.schemas.errors import PayloadTooLargeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_MAX_LENGTH = 512  # BERT-family position tables
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Encoded:
    """One text's token ids."""

    ids: np.ndarray  # int64, special tokens included


class Tokenizers:
    """One loaded tokenizer per file, shared by the decode threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[Path, Tokenizer] = {}

    def get(self, spec: ModelSpec) -> Tokenizer:
        """The tokenizer of a model, with its own truncation and padding turned off."""
        path = tokenizer_path(spec)
        with self._lock:
            tokenizer = self._loaded.get(path)
            if tokenizer is None:
                tokenizer = Tokenizer.from_file(str(path))
                tokenizer.no_truncation()  # too long is an error here, not a silent cut
                tokenizer.no_padding()  # batches are padded to their own longest item
                self._loaded[path] = tokenizer
            return tokenizer


def tokenizer_path(spec: ModelSpec) -> Path:
    """``params.tokenizer`` (relative to the model file's folder), else ``tokenizer.json`` beside it."""
    base = spec.path.parent if spec.path is not None else Path.cwd()
    path = Path(str(model_param(spec, "tokenizer", "tokenizer.json"))).expanduser()
    return path if path.is_absolute() else base / path


def encode(tokenizers: Tokenizers, payload: bytes | str, spec: ModelSpec, limits: PipelineLimits) -> Encoded:
    """Token ids of one request's text, or PAYLOAD_TOO_LARGE when the model cannot take them all."""
    text = text_payload(payload, limits)
    ids = tokenizers.get(spec).encode(text).ids
    limit = int(model_param(spec, "max_length", DEFAULT_MAX_LENGTH))
    if limits.max_prompt_tokens is not None:
        limit = min(limit, limits.max_prompt_tokens)
    if len(ids) > limit:
        raise PayloadTooLargeError(f"text is {len(ids)} tokens; {spec.key} takes at most {limit}")
    return Encoded(np.asarray(ids, dtype=np.int64))


def padded_feeds(
    runtime: ModelRuntime, items: list[Encoded]
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Per-item feeds padded to the batch's longest text, and the [B, S] attention mask."""
    if not isinstance(runtime, OnnxRuntime):
        raise TypeError(f"{runtime.spec.key} uses backend {runtime.spec.backend!r}; this task needs onnx")
    wanted = runtime.input_names
    unknown = [n for n in wanted if n not in _INPUTS]
    if unknown:
        raise TypeError(f"{runtime.spec.key} has inputs {unknown}; text encoders take {list(_INPUTS)}")
    pad_id = int(model_param(runtime.spec, "pad_id", 0))
    length = max(len(item.ids) for item in items)
    ids = np.full((len(items), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(items), length), dtype=np.int64)
    for row, item in enumerate(items):
        ids[row, : len(item.ids)] = item.ids
        mask[row, : len(item.ids)] = 1
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return [{name: arrays[name][row] for name in wanted} for row in range(len(items))], mask
