"""A real ONNX model with a real leak, for the manager's leak watchdog."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from altlas.models.onnx import OnnxRuntime

LEAK_PER_BATCH = 16 * 1024 * 1024


class LeakyOnnxRuntime(OnnxRuntime):
    """Every batch keeps 16 MiB of touched memory that only unloading frees."""

    def load(self) -> None:
        super().load()
        self.hoard: list[np.ndarray] = []

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        self.hoard.append(np.ones(LEAK_PER_BATCH, dtype=np.uint8))  # ones: pages really resident
        return super().predict_batch(inputs)

    def unload(self) -> None:
        self.hoard = []
        super().unload()
