"""One pipeline per task: decode the payload, batch, call a model runtime, shape the result.

No Kafka here: pipelines take payload bytes and params and return output
records, so each can be tested with nothing but a model file.
"""

from __future__ import annotations

import importlib

from altlas.pipelines.base import Output, Pipeline, PipelineLimits, Prepared

#: Task ("<modality>.<task>") -> "module:Class" of its pipeline (constructed with
#: the PipelineLimits). Imported when the orchestrator starts; a pipeline whose
#: optional dependency is missing is left out, and its task answers UNKNOWN_TASK.
PIPELINES: dict[str, str] = {
    "vision.classify": "altlas.pipelines.image_classification:ImageClassificationPipeline",
    "vision.detect": "altlas.pipelines.detection:DetectionPipeline",
    "vision.ocr": "altlas.pipelines.ocr:OcrPipeline",
    "vision.segment": "altlas.pipelines.segmentation:SegmentationPipeline",
    "audio.transcribe": "altlas.pipelines.transcription:TranscriptionPipeline",
    "audio.tts": "altlas.pipelines.tts:SpeechPipeline",
    "text.tts": "altlas.pipelines.tts:TextSpeechPipeline",
    "audio.classify": "altlas.pipelines.audio_classification:AudioClassificationPipeline",
    "audio.diarize": "altlas.pipelines.diarization:DiarizationPipeline",
    "text.generate": "altlas.pipelines.text_generation:TextGenerationPipeline",
    "text.chat": "altlas.pipelines.text_chat:TextChatPipeline",
    "text.embed": "altlas.pipelines.text_embedding:TextEmbeddingPipeline",
    "text.classify": "altlas.pipelines.text_classification:TextClassificationPipeline",
}


_guard: list[int] = []  # the pixel limit Pillow's guard was set to, once set


def guard_images(max_pixels: int) -> None:
    """Set Pillow's process-wide bomb guard to the configured limit before any image is opened.

    Every ``open()`` in the process then stops where the service's limit does
    (a warning above it, turned into an error where altlas decodes, and an
    error above twice it), task detection's included. The guard is one global:
    a second set of pipelines with a higher limit raises it, a lower one
    leaves it (each decode still checks its own limit from the header).
    """
    from PIL import Image

    if not _guard or max_pixels > _guard[0]:
        _guard[:] = [max_pixels]
        Image.MAX_IMAGE_PIXELS = max_pixels


def load_pipelines(limits: PipelineLimits) -> tuple[dict[str, Pipeline], dict[str, str]]:
    """Every pipeline that can be imported here, and why the others could not."""
    loaded: dict[str, Pipeline] = {}
    missing: dict[str, str] = {}
    guard_images(limits.max_image_pixels)
    for task, target in PIPELINES.items():
        module, _, name = target.partition(":")
        try:
            loaded[task] = getattr(importlib.import_module(module), name)(limits)
        except ImportError as exc:
            missing[task] = str(exc)
    return loaded, missing


__all__ = ["PIPELINES", "Output", "Pipeline", "PipelineLimits", "Prepared", "load_pipelines"]
