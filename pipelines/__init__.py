"""One pipeline per task: decode the payload, batch, call a model runtime, shape the result.

No Kafka here: pipelines take payload bytes and params and return output
records, so each can be tested with nothing but a model file.
"""

from __future__ import annotations

from collections.abc import Callable

from altlas.pipelines.base import Output, Pipeline, PipelineLimits, Prepared
from altlas.pipelines.image_classification import ImageClassificationPipeline

#: Task ("<modality>.<task>") -> pipeline constructor.
PIPELINES: dict[str, Callable[[PipelineLimits], Pipeline]] = {
    "vision.classify": ImageClassificationPipeline,
}

__all__ = ["PIPELINES", "ImageClassificationPipeline", "Output", "Pipeline", "PipelineLimits", "Prepared"]
