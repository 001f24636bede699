"""``text.embed``: a sentence vector from an ONNX encoder (sentence-transformers style).

A model that outputs a sentence vector (a 2-D output, e.g.
``sentence_embedding``) is used as is; one that only outputs token vectors
(a plain Hugging Face export's ``last_hidden_state``) is pooled here over the
attention mask (``params.pooling``: mean or cls). ``params.normalize`` (default
true) scales vectors to unit length, so a dot product is a cosine similarity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.pipelines.base import Output, PipelineLimits, Prepared, model_param
from altlas.pipelines.text_encoder import Encoded, Tokenizers, encode, padded_feeds
from altlas.schemas.types import Embedding, ParamValue


def pool(tokens: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
    """One vector from [S, H] token vectors: mean over real tokens, or the first (CLS)."""
    if how == "cls":
        return np.asarray(tokens[0], dtype=np.float32)
    weights = mask[: tokens.shape[0]].astype(np.float32)[:, None]
    return np.asarray((tokens * weights).sum(axis=0) / max(float(weights.sum()), 1e-9), dtype=np.float32)


class TextEmbeddingPipeline:
    """``text.embed`` on an ONNX text encoder."""

    task = "text.embed"

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()
        self.tokenizers = Tokenizers()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Tokenise, rejecting texts longer than the model takes."""
        return Prepared(encode(self.tokenizers, payload, spec, self.limits), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Embed a batch in one model call; output i answers item i."""
        encoded: list[Encoded] = [item.data for item in items]
        feeds, mask = padded_feeds(runtime, encoded)
        raw = runtime.predict_batch(feeds)
        spec = runtime.spec
        how = str(model_param(spec, "pooling", "mean"))
        normalize = bool(model_param(spec, "normalize", True))
        outputs: list[Output] = []
        for row, (item, out) in enumerate(zip(encoded, raw, strict=True)):
            if isinstance(out, Exception):
                outputs.append(out)
                continue
            vector = self._vector(runtime, out, mask[row], how)
            if normalize:
                vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
            outputs.append(
                Embedding(vector=vector.tolist(), dim=int(vector.size), prompt_tokens=len(item.ids))
            )
        return outputs

    @staticmethod
    def _vector(runtime: ModelRuntime, out: dict[str, np.ndarray], mask: np.ndarray, how: str) -> np.ndarray:
        name = model_param(runtime.spec, "output")
        if name is None:
            flat = [n for n, a in out.items() if np.ndim(a) == 1]
            name = flat[0] if flat else next(iter(out))
        array = np.asarray(out[name], dtype=np.float32)
        if array.ndim == 2:  # token vectors: pool them here
            return pool(array, mask, how)
        if array.ndim != 1:
            raise TypeError(
                f"{runtime.spec.key}: output {name} has shape {array.shape}; expected [H] or [S, H]"
            )
        return array
