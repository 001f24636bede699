"""Keep payload decoding off the cores while a CPU-bound model runs.

A model that runs on every CPU core (ONNX Runtime on the CPU provider with its
default thread count) splits each operator across the cores and waits for the
slowest share. A decoder thread on one of those cores does not run beside the
model, it stalls it: on 2 cores a batch of the 224 px orientation classifier
took twice as long while images were being decoded, and the machine did less
work in total. The cores are better used in turns: the model's batch runs
alone (exclusive), decoding runs between batches (shared, on every decoder
thread at once).

Decoders hold the gate for a whole chunk of payloads and step aside between
payloads when a model is waiting (``yield_to_model``), so a model waits at most
one payload's decode, while an idle gate costs decoders one attribute read per
payload. A model that waits is preferred over decoders that want to start, so a
steady flow of payloads cannot starve inference.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CpuGate:
    """A readers-writer lock: decoders share the cores, a CPU-bound batch takes them all."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._decoders = 0
        self._model = False
        self._models_waiting = 0

    @property
    def model_waiting(self) -> bool:
        """Whether a model batch waits for the decoders (read without the lock: a hint)."""
        return self._models_waiting > 0

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Hold the cores shared with other decoders."""
        self._enter_decoder()
        try:
            yield
        finally:
            self._leave_decoder()

    def yield_to_model(self) -> None:
        """Inside ``decoding``: let a waiting model batch run first, then carry on."""
        if self._models_waiting:
            self._leave_decoder()
            self._enter_decoder()

    @contextmanager
    def model(self) -> Iterator[None]:
        """Hold every core for one model batch."""
        with self._cond:
            self._models_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._model and self._decoders == 0)
            finally:
                self._models_waiting -= 1
            self._model = True
        try:
            yield
        finally:
            with self._cond:
                self._model = False
                self._cond.notify_all()

    def _enter_decoder(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._model and self._models_waiting == 0)
            self._decoders += 1

    def _leave_decoder(self) -> None:
        with self._cond:
            self._decoders -= 1
            if self._decoders == 0:
                self._cond.notify_all()
