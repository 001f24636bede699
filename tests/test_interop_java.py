"""Apache Avro for Java and our codec read each other's single-object records.

Teams on the JVM consume and produce altlas topics with org.apache.avro's
``BinaryMessageEncoder``/``BinaryMessageDecoder``, which find the writer schema
by the CRC-64-AVRO fingerprint after ``C3 01``. fastavro round trips cannot show
that our canonical form, fingerprint byte order and body encoding are the ones
the reference implementation computes; these tests run the real Java library
(``tests/interop/AvroInterop.java``) against the ``.avsc`` files themselves.

No Kafka here: the wire contract is the bytes, so files carry them across.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import Phase, find, settings

from altlas.schemas.catalog import EVENT_NAMES, SchemaCatalog, schema_dir
from altlas.schemas.codec import AvroCodec
from altlas.schemas.types import (
    Classification,
    Label,
    ResultStatus,
    Timings,
    VisionRequest,
    VisionResult,
    VisionTask,
)
from tests.avro_strategies import datums
from tests.java import AVRO_VERSION, avro_classpath

CATALOG = SchemaCatalog()
#: What Java reports per schema (source, name, fingerprint, canonical), by (source kind, full name).
JavaSchemas = dict[tuple[str, str], dict[str, str]]
INTEROP_SOURCE = Path(__file__).parent / "interop" / "AvroInterop.java"
#: Each run lives about a second: the C1 compiler alone and the serial GC start faster.
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


@dataclass(frozen=True)
class AvroInterop:
    """``AvroInterop.java`` run by Java's single-file source launcher (no build step)."""

    classpath: str

    def __call__(self, *args: str | Path) -> str:
        """Run one command; its stdout, or a failure showing Java's stderr."""
        proc = subprocess.run(
            ["java", *JVM_FLAGS, "-cp", self.classpath, str(INTEROP_SOURCE), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"AvroInterop {args[0]} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        return proc.stdout


@pytest.fixture(scope="module")
def interop() -> AvroInterop:
    """The Java side; skipped, not failed, where no JDK (or no way to fetch the jars) exists."""
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH: the Java Avro interop tests need a JDK 17+")
    jars = avro_classpath()
    if not jars.ready and shutil.which("mvn") is None:
        pytest.skip(f"mvn is not on PATH and the Avro {AVRO_VERSION} jars are not cached in {jars.root}")
    return AvroInterop(jars.ensure().classpath)


# ------------------------------------------------------------------ Java writes, Python reads
def test_a_vision_request_encoded_by_java_avro_decodes_in_python_field_for_field(
    interop: AvroInterop, tmp_path: Path
) -> None:
    out = tmp_path / "vision_request.bin"
    interop("encode-vision-request", schema_dir(), out)
    data = out.read_bytes()

    assert data[:10] == b"\xc3\x01" + CATALOG.get("VisionRequest").fingerprint
    request = AvroCodec(CATALOG).decode_record(data, VisionRequest)
    assert request.request_id == "java-req-1"
    assert request.task is VisionTask.DETECT
    assert request.model == "yolo@2"
    assert request.params == {
        "top_k": 5,
        "threshold": 0.25,
        "classes": ["cat", "dog", "größe"],
        "half": True,
        "strategy": "letterbox",
        "seed": None,
    }
    # True == 1 and 5 == 5.0 in Python: the union branch Java chose shows in the type.
    assert {k: type(v) for k, v in request.params.items()} == {
        "top_k": int,
        "threshold": float,
        "classes": list,
        "half": bool,
        "strategy": str,
        "seed": type(None),
    }
    assert request.payload == b"\x89PNG\r\n\x1a\n\x00\xff\x7f"
    assert request.content_type == "image/png"
    assert request.reply_topic is None  # left to the schema default by GenericRecordBuilder
    assert request.created_at == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert request.deadline == datetime(2026, 1, 2, 3, 5, 5, 678000, tzinfo=UTC)
    assert request.metadata == {"tenant": "acme", "note": "größe ✓"}
    # Nothing was lost or reinterpreted: our encoder gives back Java's exact bytes.
    assert AvroCodec(CATALOG).encode_record(request) == data


# ------------------------------------------------------------------ Python writes, Java reads
def _classified_result() -> VisionResult:
    return VisionResult(
        request_id="py-res-1",
        task="classify",
        status=ResultStatus.OK,
        model_id="orientation",
        model_version="1",
        output=Classification(
            labels=[Label(index=0, label="Katze ✓", score=0.875), Label(index=3, label="dog", score=0.125)]
        ),
        error=None,
        timings=Timings(queued_ms=1.5, inference_ms=12.25, batch_size=4, total_ms=14.0),
        created_at=datetime(2026, 1, 2, 3, 4, 6, 789000, tzinfo=UTC),
        attributes={"cache": "miss"},
        metadata={"tenant": "acme"},
    )


def test_a_vision_result_encoded_by_python_decodes_in_java_avro_with_its_fingerprint_checked(
    interop: AvroInterop, tmp_path: Path
) -> None:
    data = AvroCodec(CATALOG).encode_record(_classified_result())
    path = tmp_path / "vision_result.bin"
    path.write_bytes(data)

    decoded = json.loads(interop("decode-vision-result", schema_dir(), path))

    assert decoded["output_type"] == "altlas.events.Classification"
    assert decoded["record"] == {
        "request_id": "py-res-1",
        "task": "classify",
        "status": "ok",
        "model_id": "orientation",
        "model_version": "1",
        "output": {
            "labels": [
                {"index": 0, "label": "Katze ✓", "score": 0.875},
                {"index": 3, "label": "dog", "score": 0.125},
            ]
        },
        "error": None,
        "timings": {"queued_ms": 1.5, "inference_ms": 12.25, "batch_size": 4, "total_ms": 14.0},
        "created_at": 1767323046789,  # 2026-01-02T03:04:06.789Z in timestamp-millis
        "attributes": {"cache": "miss"},
        "metadata": {"tenant": "acme"},
        "members": [],  # the recursive array (ensemble members) decodes in Java too
    }
    # Java's BinaryMessageEncoder writes the very bytes we wrote, header included.
    assert bytes.fromhex(decoded["reencoded"]) == data


# ------------------------------------------------------------------ fingerprints of every event
@pytest.fixture(scope="module")
def java_schemas(interop: AvroInterop, tmp_path_factory: pytest.TempPathFactory) -> JavaSchemas:
    """Java's canonical form and fingerprint of each schema, by (source, full name).

    One JVM run covers both sources: the folder of ``.avsc`` files (Java resolves
    the cross-file references itself) and ``SchemaCatalog.bundled`` output (what
    goes to a Confluent schema registry).
    """
    bundles = tmp_path_factory.mktemp("bundled")
    for name in EVENT_NAMES:
        (bundles / f"{name}.avsc").write_text(json.dumps(CATALOG.bundled(name)))
    folder = str(schema_dir())
    stdout = interop("fingerprints", folder, *(bundles / f"{name}.avsc" for name in EVENT_NAMES))
    found: JavaSchemas = {}
    for line in stdout.splitlines():
        entry = json.loads(line)
        source = "folder" if entry["source"] == folder else "bundled"
        found[(source, entry["name"])] = entry
    return found


def _codec_header(name: str) -> bytes:
    """The first 10 bytes our codec writes for a (simplest valid) record of ``name``."""
    datum = find(
        datums(CATALOG.bundled(name)),
        lambda _: True,
        settings=settings(database=None, phases=[Phase.generate], derandomize=True),
    )
    return AvroCodec(CATALOG).encode(name, datum)[:10]


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_java_fingerprint_of_every_event_is_the_one_our_codec_writes(
    name: str, java_schemas: JavaSchemas
) -> None:
    java = java_schemas[("folder", CATALOG.full_name(name))]
    assert java["canonical"] == CATALOG.get(name).canonical
    assert _codec_header(name) == b"\xc3\x01" + bytes.fromhex(java["fingerprint"])


@pytest.mark.parametrize("name", EVENT_NAMES)
def test_bundled_schemas_have_the_same_java_fingerprint_as_the_avsc_files(
    name: str, java_schemas: JavaSchemas
) -> None:
    full = CATALOG.full_name(name)
    assert java_schemas[("bundled", full)]["fingerprint"] == java_schemas[("folder", full)]["fingerprint"]
    assert java_schemas[("bundled", full)]["fingerprint"] == CATALOG.get(name).fingerprint_hex
