"""A real ONNX model with a real leak, for the manager's leak watchdog."""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np

from altlas.models.onnx import OnnxRuntime

LEAK_PER_BATCH = 16 * 1024 * 1024


class LeakyOnnxRuntime(OnnxRuntime):
    """Every batch keeps 16 MiB of touched memory that only unloading frees.

    The leak is its own anonymous mapping rather than a numpy array: glibc
    raises its mmap threshold after the first free, so later arrays would come
    from heap pages an earlier unload left resident, the process would not
    grow, and how many restarts the test sees would depend on allocator history.
    """

    def load(self) -> None:
        super().load()
        self.hoard: list[mmap.mmap] = []

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        block = mmap.mmap(-1, LEAK_PER_BATCH)
        np.frombuffer(block, dtype=np.uint8).fill(1)  # touched: pages really resident
        self.hoard.append(block)
        return super().predict_batch(inputs)

    def unload(self) -> None:
        for block in self.hoard:
            block.close()
        self.hoard = []
        super().unload()
