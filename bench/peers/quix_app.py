"""Quix Streams, as its documentation deploys a stateless transform.

``Application`` + ``StreamingDataFrame``: the input topic's values are read by
Quix's own ``AvroDeserializer`` and the results written by its ``AvroSerializer``
(both subclassed only to strip / add the 10-byte single-object framing, which
Quix does not speak), ``sdf.apply(model)`` per message (Quix has no batch API),
``sdf.to_topic(output)`` keeping the input key (the request id). Settings are
Quix's defaults (commit_interval 5 s, consumer_poll_timeout 1 s) apart from
``processing_guarantee`` and ``auto_offset_reset="earliest"``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from handler import Handler
from quixstreams import Application
from quixstreams.models.serializers.avro import AvroDeserializer, AvroSerializer


class SingleObjectAvroDeserializer(AvroDeserializer):  # type: ignore[misc]
    """Quix's Avro deserializer after the ``C3 01`` + fingerprint prefix."""

    def __call__(self, value: bytes, ctx: Any) -> Any:
        return super().__call__(value[10:], ctx)


class SingleObjectAvroSerializer(AvroSerializer):  # type: ignore[misc]
    """Quix's Avro serializer, framed like altlas's results."""

    def __init__(self, schema: Any, header: bytes) -> None:
        super().__init__(schema)
        self._header = header

    def __call__(self, value: Any, ctx: Any) -> bytes:
        return self._header + super().__call__(value, ctx)


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--bootstrap", "--input", "--output", "--model", "--group", "--workload", "--schemas"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--guarantee", default="at-least-once", choices=["at-least-once", "exactly-once"])
    args = parser.parse_args()
    handler = Handler(args.workload, args.model, args.schemas)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee=args.guarantee,
        loglevel=logging.WARNING,
    )
    source = app.topic(
        args.input,
        key_deserializer="bytes",
        value_deserializer=SingleObjectAvroDeserializer(handler.request_schema_json),
    )
    sink = app.topic(
        args.output,
        key_serializer="bytes",
        value_serializer=SingleObjectAvroSerializer(handler.result_schema_json, handler.result_header),
    )
    sdf = app.dataframe(source)
    sdf = sdf.apply(lambda request: handler.answer([request])[0])
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
