"""MLServer custom runtime: the shared handler's preprocessing and ONNX call behind MLServer's V2 protocol.

mlserver-onnx is not on PyPI, so this is the documented way to serve an ONNX
model: an ``MLModel`` subclass named in ``model-settings.json``. A request is
a V2 ``InferenceRequest`` whose BYTES input carries base64 PNGs (MLServer
speaks V2 JSON on Kafka, not Avro); the response carries the top-5 labels and
scores per image. With adaptive batching on, MLServer concatenates requests
along the first dimension and this runs them as one ``session.run``.
"""

from __future__ import annotations

import base64

import numpy as np
from handler import Handler
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class OnnxClassifier(MLModel):  # type: ignore[misc]
    """An ONNX image classifier."""

    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        self.handler = Handler(extra["workload"], self.settings.parameters.uri, extra["schemas"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        data = payload.inputs[0].data
        items = data.root if hasattr(data, "root") else data
        tensors = [self.handler.pixels(base64.b64decode(item)) for item in items]
        probs = self.handler.infer(tensors)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
        labels = [self.handler.labels[i] for row in top for i in row]
        scores = np.take_along_axis(probs, top, axis=1)
        shape = [len(tensors), top.shape[1]]
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                ResponseOutput(name="label", shape=shape, datatype="BYTES", data=labels),
                ResponseOutput(name="score", shape=shape, datatype="FP32", data=scores.ravel().tolist()),
            ],
        )
