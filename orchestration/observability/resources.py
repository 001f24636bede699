"""Sampling the resources of this process and machine, GPUs included when NVML is there.

Samples go to Prometheus gauges and, periodically, into model-status
heartbeats (one per loaded model), so whoever reads the compacted status topic
sees each model's host and how loaded it is without scraping every instance.
"""

from __future__ import annotations

import logging
from typing import Any

import psutil

from altlas.schemas.types import GpuSnapshot, ResourceSnapshot

log = logging.getLogger(__name__)


class ResourceSampler:
    """Takes ResourceSnapshots; NVML is optional and probed once."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only primes the counter
        psutil.cpu_percent(None)
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no driver, no GPU, or no nvidia-ml-py: CPU-only sampling
            self._nvml = None

    def sample(self, models_memory_bytes: int = 0) -> ResourceSnapshot:
        """CPU since the previous sample, memory now, and every GPU NVML reports."""
        vm = psutil.virtual_memory()
        return ResourceSnapshot(
            process_cpu_percent=float(self._process.cpu_percent(None)),
            process_rss_bytes=int(self._process.memory_info().rss),
            system_cpu_percent=float(psutil.cpu_percent(None)),
            system_memory_used_bytes=int(vm.total - vm.available),
            system_memory_total_bytes=int(vm.total),
            models_memory_bytes=models_memory_bytes,
            gpus=self._gpus(),
        )

    def _gpus(self) -> list[GpuSnapshot]:
        if self._nvml is None:
            return []
        nv = self._nvml
        out = []
        try:
            for index in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                util = nv.nvmlDeviceGetUtilizationRates(handle)
                name = nv.nvmlDeviceGetName(handle)
                out.append(
                    GpuSnapshot(
                        index=index,
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        memory_used_bytes=int(memory.used),
                        memory_total_bytes=int(memory.total),
                        utilization_percent=float(util.gpu),
                    )
                )
        except Exception as exc:
            log.debug("nvml sampling failed: %s", exc)
        return out
