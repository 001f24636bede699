"""The three modalities and the request and result records of each: written once, used everywhere.

Topics, consumer groups, processors, clients and the gateway are all per
modality; which Avro record a modality's requests and results are is a fact
of the contract, so it lives here with the records.
"""

from __future__ import annotations

from typing import Literal

from altlas.schemas.types import (
    AnyRequest,
    AudioRequest,
    AudioResult,
    Result,
    TextRequest,
    TextResult,
    VisionRequest,
    VisionResult,
)

Modality = Literal["text", "vision", "audio"]
MODALITIES: tuple[Modality, ...] = ("text", "vision", "audio")

REQUEST_TYPES: dict[Modality, type[AnyRequest]] = {
    "text": TextRequest,
    "vision": VisionRequest,
    "audio": AudioRequest,
}
RESULT_TYPES: dict[Modality, type[Result]] = {
    "text": TextResult,
    "vision": VisionResult,
    "audio": AudioResult,
}
#: A request record's full Avro name -> its modality (what a replay reads from the writer schema).
MODALITY_OF_RECORD: dict[str, Modality] = {cls.avro_name: m for m, cls in REQUEST_TYPES.items()}


def request_modality(request: AnyRequest) -> Modality:
    """The modality a request record belongs to."""
    return MODALITY_OF_RECORD[request.avro_name]
