"""Intake: the bytes of consumed records become requests, or the errors that answer them.

Bad input is a value here, never an exception: each record decodes to its request or to the
AltlasError its answer will carry. Only a TransientError (the schema registry is down) is raised,
so the batch is retried later instead of being answered with errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from altlas.consumers.records import InboundRecord
from altlas.orchestration.serving.answers import Answers
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import (
    AltlasError,
    DecodeError,
    ErrorCode,
    InvalidRequestError,
    PayloadTooLargeError,
    TransientError,
)
from altlas.schemas.types import AnyRequest, DeadLetter

#: Records larger than this are read (Avro and validation) on a thread rather than on the event loop.
READ_ON_LOOP_BYTES = 64 * 1024


class Intake:
    """Reads the records of one modality into requests."""

    def __init__(
        self,
        request_type: type[AnyRequest],
        codec: AvroCodec,
        answers: Answers,
        *,
        max_message_bytes: int,
        dead_letter_topic: str,
    ) -> None:
        self.request_type = request_type
        self.codec = codec
        self.answers = answers
        self.max_message_bytes = max_message_bytes
        self.dead_letter_topic = dead_letter_topic

    async def decode_all(self, records: Sequence[InboundRecord]) -> list[AnyRequest | AltlasError]:
        """One request or error per record, same order."""
        remote_ids = getattr(self.codec.schema_ids, "remote", False)
        if remote_ids:  # registry look-ups are blocking I/O: do them off the event loop
            await asyncio.to_thread(self.codec.prefetch, [r.value for r in records if r.value], ())
        # Reading Avro holds the GIL for as long as the record is big (a 2 MB record of a long params
        # list takes a second): big ones are read on a thread, where the loop still gets its turns.
        big = {i for i, r in enumerate(records) if r.value is not None and len(r.value) > READ_ON_LOOP_BYTES}
        off_loop: dict[int, AnyRequest | AltlasError] = {}
        if big:
            read = await asyncio.to_thread(lambda: {i: self.decode_or_error(records[i]) for i in big})
            off_loop.update(read)
        decoded = [off_loop[i] if i in big else self.decode_or_error(r) for i, r in enumerate(records)]
        if remote_ids:
            await asyncio.to_thread(self.codec.prefetch, (), self._outputs(records, decoded))
        return decoded

    def decode_or_error(self, rec: InboundRecord) -> AnyRequest | AltlasError:
        """The request, or the error that answers it; a TransientError (registry down) is raised."""
        try:
            return self.decode(rec)
        except TransientError:
            raise
        except AltlasError as exc:
            return exc

    def decode(self, rec: InboundRecord) -> AnyRequest:
        """The request of ``rec``; raises the AltlasError that answers it otherwise."""
        if rec.unreadable is not None:
            raise DecodeError(f"the Kafka client could not parse the record: {rec.unreadable}")
        if rec.value is None:
            raise DecodeError("record has no value (tombstone)")
        if len(rec.value) > self.max_message_bytes:
            raise PayloadTooLargeError(
                f"record of {len(rec.value)} bytes exceeds the limit of {self.max_message_bytes}"
            )
        request = self.codec.decode_record(rec.value, self.request_type)
        if not request.request_id:
            raise InvalidRequestError("request_id is empty", code=ErrorCode.INVALID_PAYLOAD)
        return request

    def _outputs(
        self, records: Sequence[InboundRecord], decoded: Sequence[AnyRequest | AltlasError]
    ) -> set[tuple[str, str]]:
        """(record name, topic) pairs this batch's answers may be written as."""
        result = self.answers.result_type.avro_name
        topics = {self.answers.default_results}
        for rec, request in zip(records, decoded, strict=True):
            if isinstance(request, AltlasError):
                salvage = self.answers.salvage(rec)
                topics.add(self.answers.reply_topic(salvage.reply_topic if salvage else None))
            else:
                topics.add(self.answers.reply_topic(request.reply_topic))
        return {(result, t) for t in topics} | {(DeadLetter.avro_name, self.dead_letter_topic)}
