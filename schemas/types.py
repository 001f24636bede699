"""pydantic mirrors of the Avro records, for the Python side of the contract.

The ``.avsc`` files are the source of truth; these classes follow them field for
field (``tests/test_schema_types.py`` fails when the two drift apart). Each
record class names its Avro record in ``avro_name`` so that union branches can
be written and read without guessing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from types import UnionType
from typing import Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

ParamValue = bool | int | float | str | list[str] | None


def utcnow() -> datetime:
    """Current time as an aware UTC datetime (what timestamp-millis decodes to)."""
    return datetime.now(UTC)


class Record(BaseModel):
    """Base of every mirrored Avro record."""

    # bytes as base64 in JSON (audio, images): JSON is how cached outputs travel through Redis.
    model_config = ConfigDict(
        extra="forbid", use_enum_values=False, ser_json_bytes="base64", val_json_bytes="base64"
    )
    avro_name: ClassVar[str] = ""


# ---------------------------------------------------------------- enums
class TextTask(StrEnum):
    """Tasks accepted on the text request topic."""

    GENERATE = "generate"
    CHAT = "chat"
    EMBED = "embed"
    CLASSIFY = "classify"
    TTS = "tts"
    AUTO = "auto"


class VisionTask(StrEnum):
    """Tasks accepted on the vision request topic."""

    CLASSIFY = "classify"
    DETECT = "detect"
    OCR = "ocr"
    SEGMENT = "segment"
    AUTO = "auto"


class AudioTask(StrEnum):
    """Tasks accepted on the audio request topic."""

    TRANSCRIBE = "transcribe"
    TTS = "tts"
    CLASSIFY = "classify"
    DIARIZE = "diarize"
    AUTO = "auto"


class ResultStatus(StrEnum):
    """Outcome of one request."""

    OK = "ok"
    ERROR = "error"
    EXPIRED = "expired"
    PARTIAL = "partial"


class ModelState(StrEnum):
    """Lifecycle state of a model in one orchestrator instance."""

    LOADING = "loading"
    READY = "ready"
    UNLOADED = "unloaded"
    EVICTED = "evicted"
    FAILED = "failed"
    CIRCUIT_OPEN = "circuit_open"
    CIRCUIT_CLOSED = "circuit_closed"
    UNKNOWN = "unknown"


class ModelAction(StrEnum):
    """What a model command asks for (append only: readers of an older schema read a new symbol as status)."""

    LOAD = "load"
    UNLOAD = "unload"
    STATUS = "status"
    CANCEL = "cancel"  # params.request_id: end that request, queued or generating, with its partial output


# ---------------------------------------------------------------- shared parts
class ErrorInfo(Record):
    """Why a request failed."""

    avro_name = "altlas.events.ErrorInfo"
    code: str
    message: str
    retriable: bool = False


class Timings(Record):
    """Where the time of one request went (ms)."""

    avro_name = "altlas.events.Timings"
    queued_ms: float
    inference_ms: float
    batch_size: int
    total_ms: float = 0.0


class Label(Record):
    """One scored class."""

    avro_name = "altlas.events.Label"
    index: int
    label: str
    score: float


class Classification(Record):
    """Top-k labels, best first."""

    avro_name = "altlas.events.Classification"
    labels: list[Label]


# ---------------------------------------------------------------- text outputs
class TextGeneration(Record):
    """Output of generate and chat."""

    avro_name = "altlas.events.TextGeneration"
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float


class TextChunk(Record):
    """A streamed partial result."""

    avro_name = "altlas.events.TextChunk"
    sequence: int
    text: str


class Embedding(Record):
    """Output of embed."""

    avro_name = "altlas.events.Embedding"
    vector: list[float]
    dim: int
    prompt_tokens: int = 0


class Speech(Record):
    """Output of tts."""

    avro_name = "altlas.events.Speech"
    audio: bytes
    format: str
    sample_rate: int
    duration_s: float


# ---------------------------------------------------------------- vision outputs
class Box(Record):
    """A detected object in original-image pixels."""

    avro_name = "altlas.events.Box"
    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int
    class_name: str
    score: float


class Detection(Record):
    """Output of detect."""

    avro_name = "altlas.events.Detection"
    boxes: list[Box]
    image_width: int
    image_height: int


class OcrWord(Record):
    """One recognised word."""

    avro_name = "altlas.events.OcrWord"
    text: str
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float


class Ocr(Record):
    """Output of ocr."""

    avro_name = "altlas.events.Ocr"
    text: str
    words: list[OcrWord]
    language: str


class RleMask(Record):
    """Row-major run-length encoded binary mask."""

    avro_name = "altlas.events.RleMask"
    height: int
    width: int
    counts: list[int]


class SegmentInstance(Record):
    """One segmented object."""

    avro_name = "altlas.events.SegmentInstance"
    class_id: int
    class_name: str
    score: float
    box: Box | None = None
    polygons: list[list[float]]
    mask: RleMask


class ClassMask(Record):
    """The pixels of one class."""

    avro_name = "altlas.events.ClassMask"
    class_id: int
    class_name: str
    mask: RleMask


class Segmentation(Record):
    """Output of segment."""

    avro_name = "altlas.events.Segmentation"
    instances: list[SegmentInstance] = Field(default_factory=list)
    class_masks: list[ClassMask] = Field(default_factory=list)
    image_width: int
    image_height: int


# ---------------------------------------------------------------- audio outputs
class Word(Record):
    """A word with timestamps."""

    avro_name = "altlas.events.Word"
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None


class TranscriptSegment(Record):
    """A transcribed span."""

    avro_name = "altlas.events.TranscriptSegment"
    start: float
    end: float
    text: str
    speaker: str | None = None


class Transcription(Record):
    """Output of transcribe."""

    avro_name = "altlas.events.Transcription"
    text: str
    language: str
    language_probability: float
    duration_s: float
    segments: list[TranscriptSegment]
    words: list[Word] = Field(default_factory=list)


class TimedLabel(Record):
    """A label over a time range."""

    avro_name = "altlas.events.TimedLabel"
    start: float
    end: float
    label: str
    score: float


class AudioClassification(Record):
    """Output of audio classify."""

    avro_name = "altlas.events.AudioClassification"
    labels: list[Label]
    segments: list[TimedLabel] = Field(default_factory=list)


class SpeakerTurn(Record):
    """One speaker's turn."""

    avro_name = "altlas.events.SpeakerTurn"
    start: float
    end: float
    speaker: str


class Diarization(Record):
    """Output of diarize."""

    avro_name = "altlas.events.Diarization"
    num_speakers: int
    turns: list[SpeakerTurn]


# ---------------------------------------------------------------- requests
class Request(Record):
    """Fields every request shares; the payload type differs per modality."""

    request_id: str
    model: str = ""
    params: dict[str, ParamValue] = Field(default_factory=dict)
    reply_topic: str | None = None
    created_at: datetime
    deadline: datetime | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class TextRequest(Request):
    """A text inference request."""

    avro_name = "altlas.events.TextRequest"
    task: TextTask = TextTask.AUTO
    payload: str


class VisionRequest(Request):
    """A vision inference request."""

    avro_name = "altlas.events.VisionRequest"
    task: VisionTask = VisionTask.AUTO
    payload: bytes
    content_type: str | None = None


class AudioRequest(Request):
    """An audio inference request."""

    avro_name = "altlas.events.AudioRequest"
    task: AudioTask = AudioTask.AUTO
    payload: bytes
    content_type: str | None = None


AnyRequest = TextRequest | VisionRequest | AudioRequest


# ---------------------------------------------------------------- results
class Result(Record):
    """Fields every result shares; ``output`` is narrowed per modality."""

    request_id: str
    task: str
    status: ResultStatus
    model_id: str = ""
    model_version: str = ""
    error: ErrorInfo | None = None
    timings: Timings
    created_at: datetime = Field(default_factory=utcnow)
    attributes: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)


class TextResult(Result):
    """The answer to a text request."""

    avro_name = "altlas.events.TextResult"
    output: TextGeneration | TextChunk | Embedding | Classification | Speech | None = None
    members: list[TextResult] = Field(default_factory=list)


class VisionResult(Result):
    """The answer to a vision request."""

    avro_name = "altlas.events.VisionResult"
    output: Classification | Detection | Ocr | Segmentation | None = None
    members: list[VisionResult] = Field(default_factory=list)


class AudioResult(Result):
    """The answer to an audio request."""

    avro_name = "altlas.events.AudioResult"
    output: Transcription | Speech | AudioClassification | Diarization | None = None
    members: list[AudioResult] = Field(default_factory=list)


AnyResult = TextResult | VisionResult | AudioResult


# ---------------------------------------------------------------- lifecycle
class GpuSnapshot(Record):
    """One GPU as NVML reports it."""

    avro_name = "altlas.events.GpuSnapshot"
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: float


class ResourceSnapshot(Record):
    """Resource use of one orchestrator process and its machine."""

    avro_name = "altlas.events.ResourceSnapshot"
    process_cpu_percent: float
    process_rss_bytes: int
    system_cpu_percent: float
    system_memory_used_bytes: int
    system_memory_total_bytes: int
    models_memory_bytes: int = 0
    gpus: list[GpuSnapshot] = Field(default_factory=list)


class ModelStatus(Record):
    """A change in a model's state."""

    avro_name = "altlas.events.ModelStatus"
    model_id: str
    model_version: str
    state: ModelState
    instance_id: str
    memory_bytes: int = 0
    load_ms: float | None = None
    message: str = ""
    command_id: str | None = None
    timestamp: datetime = Field(default_factory=utcnow)
    attributes: dict[str, str] = Field(default_factory=dict)
    resources: ResourceSnapshot | None = None


class ModelCommand(Record):
    """A request to load, unload or report a model."""

    avro_name = "altlas.events.ModelCommand"
    command_id: str
    action: ModelAction = ModelAction.STATUS
    model_id: str
    model_version: str | None = None
    requested_at: datetime = Field(default_factory=utcnow)
    params: dict[str, str] = Field(default_factory=dict)


class Header(Record):
    """One Kafka record header."""

    avro_name = "altlas.events.Header"
    key: str
    value: bytes | None = None


class DeadLetter(Record):
    """A record that could not be answered normally."""

    avro_name = "altlas.events.DeadLetter"
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None = None
    key: bytes | None = None
    value: bytes | None = None
    headers: list[Header] = Field(default_factory=list)
    error_code: str
    error_class: str
    error_message: str
    request_id: str | None = None
    consumer_group: str = ""
    instance_id: str = ""
    failed_at: datetime = Field(default_factory=utcnow)


#: Every mirrored record class, by Avro full name.
RECORD_TYPES: dict[str, type[Record]] = {
    cls.avro_name: cls
    for cls in (
        ErrorInfo,
        Timings,
        Label,
        Classification,
        TextGeneration,
        TextChunk,
        Embedding,
        Speech,
        Box,
        Detection,
        OcrWord,
        Ocr,
        RleMask,
        SegmentInstance,
        ClassMask,
        Segmentation,
        Word,
        TranscriptSegment,
        Transcription,
        TimedLabel,
        AudioClassification,
        SpeakerTurn,
        Diarization,
        TextRequest,
        VisionRequest,
        AudioRequest,
        TextResult,
        VisionResult,
        AudioResult,
        ModelStatus,
        ModelCommand,
        Header,
        DeadLetter,
        GpuSnapshot,
        ResourceSnapshot,
    )
}


def to_datum(record: Record) -> dict[str, Any]:
    """The dict fastavro writes for ``record``.

    pydantic's (Rust) ``model_dump`` does the bulk; then fields whose type is a
    union of several records get fastavro's ``(name, value)`` form, so the
    branch is named rather than guessed (guessing is slow and picks the wrong
    branch when two records share fields). This runs for every result altlas
    publishes, hence the per-class plan of which fields need that.
    """
    datum = record.model_dump()
    _name_unions(record, datum)
    return datum


def _name_unions(record: Record, datum: dict[str, Any]) -> None:
    for name, kind in _plan(type(record)):
        value = getattr(record, name)
        if value is None:
            continue
        if kind == "named":
            _name_unions(value, datum[name])
            datum[name] = (value.avro_name, datum[name])
        elif kind == "record":
            _name_unions(value, datum[name])
        else:  # a list of records that contain named unions
            for item, item_datum in zip(value, datum[name], strict=True):
                _name_unions(item, item_datum)


@cache
def _plan(cls: type[Record]) -> tuple[tuple[str, str], ...]:
    """Fields of ``cls`` that need union names, directly ("named") or inside ("record", "list")."""
    plan = []
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        origin = get_origin(annotation)
        args = get_args(annotation) if origin in (Union, UnionType) else ()
        records = [a for a in args if isinstance(a, type) and issubclass(a, Record)]
        if len(records) > 1:
            plan.append((name, "named"))
        elif origin is list and _holds_named(get_args(annotation)[0], cls):
            plan.append((name, "list"))
        else:
            single = records[0] if len(records) == 1 else annotation  # Optional[Record] or Record
            if _holds_named(single, cls):
                plan.append((name, "record"))
    return tuple(plan)


def _holds_named(inner: Any, outer: type[Record]) -> bool:
    """Whether records of type ``inner`` contain named unions (a result's ``members`` are results)."""
    if not (isinstance(inner, type) and issubclass(inner, Record)):
        return False
    if inner is outer:
        return True
    return bool(_plan(inner))


def from_datum(cls: type[Record], datum: dict[str, Any]) -> Any:
    """Build ``cls`` from a datum read with ``return_record_name`` (and its override) on."""
    if not _plan(cls):  # no union of records anywhere inside (requests): nothing to unwrap
        return cls.model_validate(datum)
    return cls.model_validate(_strip_names(datum))


def _strip_names(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        name, inner = value
        record_cls = RECORD_TYPES.get(name)
        if record_cls is not None:
            return record_cls.model_validate(_strip_names(inner))
        return _strip_names(inner)
    if isinstance(value, dict):
        return {k: _strip_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_names(v) for v in value]
    return value
