"""The work every peer does for one request, identical for all of them.

Decode the single-object Avro request, decode the image, preprocess it exactly
as altlas's registry recipe does for the workload, run ONNX Runtime, and shape
an Avro ``VisionResult`` (top-k labels) framed like altlas's own results. Only
numpy, Pillow, onnxruntime and fastavro are needed, so every peer's venv can
import this file; the frameworks differ only in how they move messages.

The schemas come from a JSON file the driver writes (self-contained copies of
altlas's ``.avsc`` files plus their fingerprints), so no peer imports altlas.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
from PIL import Image

#: Orientation classifier recipe (altlas.orchestration.devtools.assets.ORIENTATION_PARAMS), as code.
_MEAN = np.asarray([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.asarray([0.229, 0.224, 0.225], dtype=np.float32)
_GAIN = (np.float32(1.0 / 255.0) / _STD).reshape(3, 1, 1)
_OFFSET = (_MEAN / _STD).reshape(3, 1, 1)


def _tiny(image: Image.Image) -> np.ndarray:
    """Registry ``preprocess: {resize: 4}``: bilinear 4x4, /255, NCHW."""
    arr = np.asarray(image.resize((4, 4), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.ascontiguousarray((arr * np.float32(1.0 / 255.0)).transpose(2, 0, 1))


def _orientation(image: Image.Image) -> np.ndarray:
    """resize_short 256 (lanczos), centre crop 224, BGR, /255, ImageNet mean/std, NCHW."""
    w, h = image.size
    ratio = 256 / min(w, h)
    image = image.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.Resampling.LANCZOS)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    # As altlas does it (pipelines/image_classification.preprocess): one float write in CHW order.
    pixels = np.asarray(image)[..., ::-1].transpose(2, 0, 1)
    out = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, _GAIN, out=out)
    return np.subtract(out, _OFFSET, out=out)


#: workload -> (preprocess, ONNX metadata key holding the labels, model id in results)
WORKLOADS: dict[str, tuple[Callable[[Image.Image], np.ndarray], str, str]] = {
    "tiny": (_tiny, "labels", "mean-color"),
    "orientation": (_orientation, "character", "orientation"),
}


class Handler:
    """Request bytes in, result bytes out; one batched ``session.run`` per call of ``answer``."""

    def __init__(self, workload: str, model: str, schemas: str) -> None:
        with open(schemas) as f:
            spec = json.load(f)
        self.request_schema = fastavro.parse_schema(spec["request"])
        self.result_schema = fastavro.parse_schema(spec["result"])
        self.request_schema_json = spec["request"]
        self.result_schema_json = spec["result"]
        self.result_header = b"\xc3\x01" + bytes.fromhex(spec["result_fingerprint"])
        self.preprocess, labels_key, self.model_id = WORKLOADS[workload]
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.labels = self.session.get_modelmeta().custom_metadata_map[labels_key].splitlines()

    # ------------------------------------------------------------------ codec
    def decode(self, value: bytes) -> dict[str, Any]:
        """Single-object Avro (C3 01 + 8-byte fingerprint + body) to a dict."""
        return fastavro.schemaless_reader(io.BytesIO(value[10:]), self.request_schema, None)  # type: ignore[no-any-return]

    def encode(self, result: dict[str, Any]) -> bytes:
        """A result dict to single-object Avro."""
        buf = io.BytesIO()
        buf.write(self.result_header)
        fastavro.schemaless_writer(buf, self.result_schema, result)
        return buf.getvalue()

    # ------------------------------------------------------------------ work
    def pixels(self, payload: bytes) -> np.ndarray:
        """Encoded image to the model's CHW input."""
        return self.preprocess(Image.open(io.BytesIO(payload)).convert("RGB"))

    def infer(self, tensors: Sequence[np.ndarray]) -> np.ndarray:
        """One ``session.run`` over the stacked batch."""
        return self.session.run(None, {self.input_name: np.stack(tensors)})[0]  # type: ignore[no-any-return]

    def answer(self, requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Result dicts for decoded requests, the model called once for all of them."""
        t0 = time.time()
        tensors = [self.pixels(req["payload"]) for req in requests]
        t1 = time.perf_counter()
        probs = self.infer(tensors)
        inference_ms = (time.perf_counter() - t1) * 1000
        return [
            self.result(req, p, len(requests), inference_ms, t0)
            for req, p in zip(requests, probs, strict=True)
        ]

    def result(
        self, req: dict[str, Any], probs: np.ndarray, batch: int, inference_ms: float, t0: float
    ) -> dict[str, Any]:
        """The VisionResult record for one request (top-5 labels, like altlas's default top_k)."""
        top = np.argsort(-probs, kind="stable")[:5]
        return {
            "request_id": req["request_id"],
            "task": "classify",
            "status": "ok",
            "model_id": self.model_id,
            "model_version": "1",
            "output": (
                "altlas.events.Classification",
                {
                    "labels": [
                        {"index": int(i), "label": self.labels[i], "score": float(probs[i])} for i in top
                    ]
                },
            ),
            "error": None,
            "timings": {
                "queued_ms": 0.0,
                "inference_ms": inference_ms,
                "batch_size": batch,
                "total_ms": (time.time() - t0) * 1000,
            },
            "created_at": datetime.now(UTC),
        }

    def handle(self, values: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """Raw request values to (key, value) results: decode, one model call, encode."""
        requests = [self.decode(v) for v in values]
        return [(r["request_id"].encode(), self.encode(r)) for r in self.answer(requests)]
