"""Pipelines for the decoder-process tests; module-level, so a worker process can import them."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.pipelines.base import Output, Prepared
from altlas.schemas.types import ParamValue


class StubbornError(Exception):
    """An exception that cannot be unpickled: its constructor wants two arguments."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")


class WherePipeline:
    """Prepares a payload into ``len(payload)`` copies of the process id that prepared it.

    ``segv`` kills the process that decodes it (as a crashing codec would);
    ``stubborn`` raises an exception that cannot travel back from a process;
    ``slow`` takes five seconds.
    """

    task = "vision.where"
    decodes_anywhere = True

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        if payload == b"segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if payload == b"slow":  # a decode that never ends in time (a pathological input)
            time.sleep(5)
        if payload == b"stubborn":
            raise StubbornError("stubborn", "will not pickle back")
        return Prepared(np.full(len(payload), os.getpid(), dtype=np.int64), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        raise NotImplementedError


class LockedPipeline(WherePipeline):
    """Claims to decode anywhere but holds a lock, so it cannot be sent to a process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
