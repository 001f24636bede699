"""Class scores and class names, the same for every classifier whatever it classifies.

Text, image, audio and detection models all answer with score vectors over
classes whose names live either in the registry (``metadata.labels``) or in
the ONNX file itself (the metadata key ``params.labels_metadata_key`` names);
one reading of both keeps the answer the same across tasks.
"""

from __future__ import annotations

import numpy as np

from altlas.models.onnx import OnnxRuntime
from altlas.models.runtime import ModelRuntime


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def class_labels(runtime: ModelRuntime) -> list[str]:
    """Class names from the registry, else from the ONNX metadata key the registry names."""
    spec = runtime.spec
    if spec.metadata.labels:
        return list(spec.metadata.labels)
    key = spec.params.get("labels_metadata_key")
    if key and isinstance(runtime, OnnxRuntime) and key in runtime.metadata:
        return runtime.metadata[key].splitlines()
    return []
