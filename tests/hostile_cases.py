"""Hostile requests, one per way in, each with the answer altlas owes it.

Every field of a request is written by whoever sends it: these are the ones a
hostile or unlucky tenant can send to a shared altlas. Each case is the raw
record value (or None for a tombstone), the topic it goes to, and what must
come back: the error code of its result (None: no request id can be read, so a
dead letter alone), or "OK" where altlas must serve it without harm.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from altlas.orchestration.app.settings import Modality, Settings
from altlas.orchestration.clients.client import make_request
from altlas.schemas.codec import AvroCodec
from tests.images import bmp_rle, jpeg_repeating_a_scan, png_bomb, png_declaring, solid, tiff_with_strips


@dataclass(frozen=True)
class Case:
    """One hostile record and the answer it must get."""

    name: str
    modality: Modality
    value: bytes | None
    request_id: str | None  # None: nothing readable, a dead letter only
    code: str | None  # the result's error code; "OK" for a served request; None with no request id
    dead_letter: bool = True


def _flac_bomb() -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros((3_840_000, 8), dtype=np.int16), 384_000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _flac_too_long(seconds: int = 700, rate: int = 8000) -> bytes:
    """Silence past limits.max_audio_seconds, small enough to send: refused from its header."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(seconds * rate, dtype=np.int16), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _wav_of_noise() -> bytes:
    data = os.urandom(3200)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    return header + b"data" + struct.pack("<I", len(data)) + data


def hostile_cases(settings: Settings, codec: AvroCodec, small_reply_topic: str) -> list[Case]:
    """The cases, for ``settings``'s topics (a reply topic with a small max.message.bytes given)."""
    topics = settings.topics
    png = solid((30, 60, 90))
    cases: list[Case] = []

    def request(
        name: str, modality: Modality, code: str, payload: Any = png, *, task: str = "classify", **kwargs: Any
    ) -> None:
        kwargs.setdefault("model", {"vision": "mean-color", "text": "tiny", "audio": "band"}[modality])
        req = make_request(modality, task, payload, request_id=f"hostile-{name}", **kwargs)
        value = codec.encode_record(req, topic=topics.requests(modality))
        cases.append(Case(name, modality, value, req.request_id, code, dead_letter=code != "OK"))

    def raw(name: str, modality: Modality, value: bytes | None, code: str | None = None) -> None:
        cases.append(Case(name, modality, value, None, code))

    refused = "REPLY_TOPIC_REFUSED"
    request("reply-trailing-newline", "vision", refused, reply_topic="x\n")
    request("reply-own-commands-newline", "vision", refused, reply_topic=topics.model_commands + "\n")
    request("reply-consumer-offsets", "vision", refused, reply_topic="__consumer_offsets")
    request("reply-schemas", "vision", refused, reply_topic="_schemas")
    request("reply-other-team", "vision", refused, reply_topic="connect-offsets")
    request("reply-own-requests", "vision", refused, reply_topic=topics.requests("text"))
    request("reply-other-results", "vision", refused, reply_topic=topics.results("audio"))
    request(
        "reply-broker-refuses-size",
        "vision",
        "RESULT_TOO_LARGE",
        reply_topic=small_reply_topic,
        metadata={"pad": "p" * 3000},
    )
    raw("random-bytes", "vision", b"\xff" + os.urandom(200))
    whole = codec.encode_record(make_request("vision", "classify", png, model="mean-color"))
    raw("truncated-avro", "vision", whole[: len(whole) // 2])
    raw("unknown-fingerprint", "vision", b"\xc3\x01" + os.urandom(8) + whole[10:])
    raw("confluent-unknown-schema-id", "vision", b"\x00\x00\x00\x30\x39" + whole[10:])
    raw("tombstone", "vision", None)
    text_on_vision = make_request("text", "generate", "hi", request_id="hostile-wrong-schema")
    cases.append(
        Case(
            "wrong-schema",
            "vision",
            codec.encode_record(text_on_vision),
            "hostile-wrong-schema",
            "SCHEMA_MISMATCH",
        )
    )
    raw("oversized-record", "vision", b"\xc3\x01" + b"\x00" * (settings.limits.max_message_bytes + 10))
    nameless = make_request("vision", "classify", png, model="mean-color").model_copy(
        update={"request_id": ""}
    )
    raw("empty-request-id", "vision", codec.encode_record(nameless))
    request(
        "pixel-bomb-task-auto", "vision", "PAYLOAD_TOO_LARGE", png_bomb(12000, 12000), task="auto", model=""
    )
    request("pixel-bomb", "vision", "PAYLOAD_TOO_LARGE", png_bomb(12000, 12000))
    request("declared-50k-squared", "vision", "PAYLOAD_TOO_LARGE", png_declaring(50000, 50000))
    request("jpeg-scan-bomb", "vision", "PAYLOAD_TOO_LARGE", jpeg_repeating_a_scan(6000, 6000, 2000))
    request("bmp-rle-bomb", "vision", "PAYLOAD_TOO_LARGE", bmp_rle(6300, 6300))
    request("tiff-strip-bomb", "vision", "PAYLOAD_TOO_LARGE", tiff_with_strips(200_000))
    request("corrupt-png", "vision", "INVALID_PAYLOAD", b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    many = [f"m{i}" for i in range(5000)]
    request(
        "ensemble-of-5000",
        "vision",
        "INVALID_PARAMS",
        model="",
        params={"strategy": "ensemble", "models": many},
    )
    request("unknown-model", "vision", "UNKNOWN_MODEL", model="no-such-model")
    request("unknown-strategy", "vision", "INVALID_PARAMS", model="", params={"strategy": "cheapest-please"})
    request("audio-on-vision-auto", "vision", "UNKNOWN_TASK", _wav_of_noise(), task="auto", model="")
    schema = json.dumps({"type": "array", "items": {"type": "string"}, "minItems": 1_000_000})
    request(
        "json-schema-bomb",
        "text",
        "INVALID_PARAMS",
        "list things",
        task="generate",
        params={"json_schema": schema},
    )
    request(
        "text-over-limit",
        "text",
        "PAYLOAD_TOO_LARGE",
        "a" * (settings.limits.max_text_chars + 1),
        task="generate",
    )
    past = datetime.now(UTC) - timedelta(minutes=5)
    request(
        "generation-past-its-deadline",
        "text",
        "DEADLINE_EXCEEDED",
        "tell a story",
        task="generate",
        deadline=past,
    )
    cases[-1] = Case(**{**cases[-1].__dict__, "dead_letter": False})  # expired: a result, no dead letter
    request("flac-8ch-384khz-bomb", "audio", "OK", _flac_bomb())
    request("audio-past-the-duration-limit", "audio", "PAYLOAD_TOO_LARGE", _flac_too_long())
    request("corrupt-audio", "audio", "INVALID_PAYLOAD", b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(40))
    return cases


CaseFactory = Callable[[Settings, AvroCodec, str], list[Case]]
