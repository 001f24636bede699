"""Bad input never crashes the consumer and never disappears."""

from __future__ import annotations

import os
import random

from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.types import ResultStatus
from tests.conftest import Running
from tests.images import solid


async def _drain_topic(client: AltlasClient, reader, want: int, timeout_s: float = 60.0) -> list:  # type: ignore[no-untyped-def]
    import time

    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got.extend(await reader.read(0.5))
    return got


async def test_50_malformed_messages_each_get_a_dead_letter_and_valid_ones_still_answered(
    running: Running, client: AltlasClient
) -> None:
    rng = random.Random(11)
    codec = client.codec
    topic = client.topics.requests("vision")
    good_png = solid((200, 10, 10))

    def valid(i: int) -> bytes:
        req = make_request("vision", "classify", good_png, model="mean-color", request_id=f"ok-{i}")
        return codec.encode_record(req, topic=topic)

    bad: list[tuple[str, bytes, str | None, str]] = []  # (kind, bytes, readable request id, expected code)
    for _ in range(10):
        noise = os.urandom(rng.randrange(1, 300))
        # A first byte of 0x00 or 0xC3 is a framing marker (Confluent, single-object Avro) and is
        # rightly answered UNKNOWN_SCHEMA: this noise is meant to claim no framing.
        noise = (b"\xff" + noise[1:]) if noise[0] in (0x00, 0xC3) else noise
        bad.append(("random", noise, None, "DECODE_ERROR"))
    for i in range(8):
        whole = valid(1000 + i)
        bad.append(("truncated", whole[: rng.randrange(11, len(whole) - 1)], None, "DECODE_ERROR"))
    for i in range(8):
        body = valid(2000 + i)
        bad.append(("unknown fingerprint", b"\xc3\x01" + os.urandom(8) + body[10:], None, "UNKNOWN_SCHEMA"))
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)
    for i in range(3):  # task auto cannot turn audio on the vision topic into a vision task
        req = make_request("vision", "auto", wav, request_id=f"task-{i}")
        bad.append(("wrong task for the payload", codec.encode_record(req), f"task-{i}", "UNKNOWN_TASK"))
    for i in range(3, 6):  # a task no configured model serves
        req = make_request("vision", "segment", good_png, request_id=f"task-{i}")
        bad.append(("task without a model", codec.encode_record(req), f"task-{i}", "UNKNOWN_MODEL"))
    for i in range(6):
        req = make_request("text", "generate", "hello", request_id=f"schema-{i}")
        bad.append(
            ("text request on vision topic", codec.encode_record(req), f"schema-{i}", "SCHEMA_MISMATCH")
        )
    for i in range(6):
        req = make_request("vision", "classify", good_png, model="no-such-model", request_id=f"model-{i}")
        bad.append(("missing model", codec.encode_record(req), f"model-{i}", "UNKNOWN_MODEL"))
    for i in range(6):
        corrupt = good_png[: len(good_png) // 2] if i % 2 else b"\x89PNG\r\n\x1a\n" + os.urandom(64)
        req = make_request("vision", "classify", corrupt, model="mean-color", request_id=f"image-{i}")
        bad.append(("corrupt image", codec.encode_record(req), f"image-{i}", "INVALID_PAYLOAD"))
    assert len(bad) == 50

    stream: list[tuple[str, bytes]] = [("good", valid(i)) for i in range(100)]
    for item in bad:
        stream.insert(rng.randrange(len(stream) + 1), (item[0], item[1]))

    dlq = client.reader(client.topics.dead_letter)
    results = client.reader(client.topics.results("vision"))
    await dlq.start()
    await results.start()
    try:
        positions = {}
        for _kind, value in stream:
            meta = await client.send_raw(topic, value, key=os.urandom(4))
            positions[value] = (meta.partition, meta.offset)
        readable = {rid: code for _, _, rid, code in bad if rid}
        answers = await client.collect(
            results, "vision", [f"ok-{i}" for i in range(100)] + list(readable), 90
        )
        letters = [client.decode_dead_letter(r.value) for r in await _drain_topic(client, dlq, 50)]
    finally:
        await dlq.stop()
        await results.stop()

    for i in range(100):
        assert answers[f"ok-{i}"].status is ResultStatus.OK
    for rid, code in readable.items():
        assert answers[rid].status is ResultStatus.ERROR
        assert answers[rid].error is not None and answers[rid].error.code == code, (rid, answers[rid].error)
    assert len(letters) == 50
    by_value = {letter.value: letter for letter in letters}
    for kind, value, rid, code in bad:
        letter = by_value[value]
        assert letter.error_code == code, (kind, letter.error_message)
        assert (letter.topic, letter.partition, letter.offset) == (topic, *positions[value])
        assert letter.request_id == rid
        assert letter.error_message

    # Still consuming after all that.
    again = await client.request(
        make_request("vision", "classify", good_png, model="mean-color"), timeout_s=30
    )
    assert again is not None and again.status is ResultStatus.OK
