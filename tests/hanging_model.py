"""A real ONNX model that hangs for seconds on every batch, for the attempt deadline and circuit breaker.

A slow graph would do on this machine but not on a faster CI host, where it
finishes inside the deadline; a hang that does not depend on the CPU's speed
keeps the test about what it claims.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from altlas.models.onnx import OnnxRuntime

HANG_S = 2.0


class HangingOnnxRuntime(OnnxRuntime):
    """Blocks its worker thread far past any attempt deadline the test sets, then answers."""

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        time.sleep(HANG_S)
        return super().predict_batch(inputs)
