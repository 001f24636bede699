"""``text.classify``: top-k labels for a text from an ONNX sequence classifier.

The model takes the tokenised text (``input_ids``, ``attention_mask``, and
``token_type_ids`` where it declares them) and returns one score per class;
``params.output: logits`` (the default) applies a softmax, ``probabilities``
uses the scores as they are. Labels come from ``metadata.labels`` in the
registry, or from a key of the ONNX file's metadata (``params.labels_metadata_key``,
one label per line).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.pipelines.base import Output, PipelineLimits, Prepared, int_param, model_param
from altlas.pipelines.scores import class_labels, softmax
from altlas.pipelines.text_encoder import Tokenizers, encode, padded_feeds
from altlas.schemas.types import Classification, Label, ParamValue


class TextClassificationPipeline:
    """``text.classify`` on an ONNX text classifier."""

    task = "text.classify"

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()
        self.tokenizers = Tokenizers()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Check top_k and tokenise, rejecting texts longer than the model takes."""
        int_param(params, "top_k", 5, lo=1, hi=1000)
        return Prepared(encode(self.tokenizers, payload, spec, self.limits), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Classify a batch in one model call; output i answers item i."""
        feeds, _ = padded_feeds(runtime, [item.data for item in items])
        raw = runtime.predict_batch(feeds)
        labels = class_labels(runtime)
        as_logits = str(model_param(runtime.spec, "output", "logits")) == "logits"
        outputs: list[Output] = []
        for item, out in zip(items, raw, strict=True):
            if isinstance(out, Exception):
                outputs.append(out)
                continue
            scores = np.asarray(next(iter(out.values())), dtype=np.float32).reshape(-1)
            if as_logits:
                scores = softmax(scores)
            k = min(int_param(item.params, "top_k", 5, lo=1, hi=1000), scores.size)
            top = np.argsort(-scores, kind="stable")[:k]
            outputs.append(
                Classification(
                    labels=[
                        Label(
                            index=int(i),
                            label=labels[i] if i < len(labels) else str(int(i)),
                            score=float(scores[i]),
                        )
                        for i in top
                    ]
                )
            )
        return outputs
