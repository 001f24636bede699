"""Every backend and pipeline named in the tables imports (with the extras installed)."""

from __future__ import annotations

import pytest

from altlas.models.runtime import BACKENDS, runtime_class
from altlas.pipelines import PIPELINES, PipelineLimits, load_pipelines


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_backend_imports(backend: str) -> None:
    cls = runtime_class(backend)
    for method in ("load", "predict_batch", "unload", "memory_bytes"):
        assert callable(getattr(cls, method)), (backend, method)


def test_every_pipeline_loads() -> None:
    loaded, missing = load_pipelines(PipelineLimits())
    assert missing == {}
    assert set(loaded) == set(PIPELINES)
    for task, pipeline in loaded.items():
        assert pipeline.task == task
