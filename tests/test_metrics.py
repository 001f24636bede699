"""Metrics tallied per micro-batch export exactly what per-record observations would."""

from __future__ import annotations

import math
import random

from altlas.consumers.records import InboundRecord
from altlas.orchestration.observability.metrics import Metrics
from altlas.orchestration.serving.outcomes import Outcome, ResultSummary
from altlas.schemas.types import ErrorInfo, ResultStatus

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _exported(metrics: Metrics) -> list[str]:
    """The exposition without the ``_created`` timestamps, which differ between registries."""
    return [line for line in metrics.render().decode().splitlines() if "_created" not in line]


def test_a_batch_tallied_at_once_exports_what_one_observation_per_record_would() -> None:
    rng = random.Random(5)
    record = InboundRecord("in", 0, 0, None, b"x", (), 0)
    seconds = [*BOUNDS, 0.0, 100.0, *(rng.uniform(0, 70) for _ in range(300))]
    outcomes = []
    for i, s in enumerate(seconds):
        status, error = (
            (ResultStatus.ERROR, ErrorInfo(code="MODEL_FAILED", message="m"))
            if i % 7 == 0
            else (ResultStatus.OK, None)
        )
        attributes = {"cache": "hit"} if i % 5 == 0 else {}
        model = ("a", "1") if i % 3 else ("b", "2")
        summary = ResultSummary(status, "classify", *model, s * 1000, attributes)
        outcomes.append(Outcome(record, [], None, error, result=summary, dead_letter=error is not None))
    outcomes.append(Outcome(record, [], None, ErrorInfo(code="DECODE_ERROR", message="m"), dead_letter=True))

    tallied, reference = Metrics(), Metrics()
    tallied.observe_outcomes("vision", outcomes[:100])
    tallied.observe_outcomes("vision", outcomes[100:])
    for o in outcomes:
        code = o.error.code if o.error else ""
        if o.dead_letter:
            reference.dead_letters.labels("vision", code).inc()
        if o.result is None:
            continue
        r = o.result
        model = f"{r.model_id}@{r.model_version}"
        reference.requests.labels("vision", r.task, model, r.status.value, code).inc()
        reference.request_seconds.labels("vision", model).observe(r.total_ms / 1000)
        if "cache" in r.attributes:
            reference.cache.labels(r.attributes["cache"]).inc()

    mine, theirs = _exported(tallied), _exported(reference)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        if "_sum{" in a:  # the same values added in another order: equal up to rounding
            name_a, value_a = a.rsplit(" ", 1)
            name_b, value_b = b.rsplit(" ", 1)
            assert name_a == name_b and math.isclose(float(value_a), float(value_b), rel_tol=1e-12)
        else:
            assert a == b
    assert 'altlas_request_seconds_bucket{le="0.005",modality="vision",model="a@1"}' in "\n".join(
        _exported(tallied)
    )
