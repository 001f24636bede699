"""End to end through the real broker: requests in, correct results out, in batches."""

from __future__ import annotations

import random

import numpy as np

from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.types import Classification, ResultStatus
from tests.builders import MEAN_COLOR_LABELS, expected_mean_color
from tests.conftest import Running
from tests.images import rotated_page, solid


async def test_200_mixed_requests_get_200_correct_results_in_batches(
    running: Running, client: AltlasClient
) -> None:
    rng = random.Random(7)
    pages = {deg: rotated_page(deg) for deg in (0, 90, 180, 270)}
    requests, expected = [], {}
    for i in range(200):
        if i % 4 == 0:
            deg = rng.choice([0, 90, 180, 270])
            req = make_request("vision", "classify", pages[deg], params={"top_k": 2}, request_id=f"page-{i}")
            expected[req.request_id] = ("orientation", str(deg), None)
        else:
            rgb = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            req = make_request(
                "vision", "classify", solid(rgb), model="mean-color@1", request_id=f"color-{i}"
            )
            expected[req.request_id] = ("mean-color", None, rgb)
        requests.append(req)

    async with client.reader(client.topics.results("vision")) as reader:
        await client.send_many(requests)
        results = await client.collect(reader, "vision", expected, timeout_s=120)

    assert set(results) == set(expected)
    batch_sizes = []
    for rid, result in results.items():
        model, label, rgb = expected[rid]
        assert result.status is ResultStatus.OK, (rid, result.error)
        assert result.model_id == model
        output = result.output
        assert isinstance(output, Classification)
        if label is not None:
            assert output.labels[0].label == label
            assert len(output.labels) == 2
        else:
            want = expected_mean_color(rgb)
            assert output.labels[0].label == MEAN_COLOR_LABELS[int(np.argmax(want))]
            got = {lab.index: lab.score for lab in output.labels}
            assert np.allclose([got[i] for i in range(4)], want, atol=1e-6)
        if "cache" in result.attributes:  # an identical request was answered (or running) already
            assert result.attributes["cache"] in ("hit", "shared") and result.timings.batch_size == 0
            continue
        batch_sizes.append(result.timings.batch_size)
        assert result.timings.inference_ms > 0
    # With a 200-request backlog, the model lanes must have batched.
    assert max(batch_sizes) > 1
