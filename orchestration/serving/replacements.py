"""What goes out instead of an answer that cannot: an error result, or a dead letter without the value.

An answer is never silently lost because its topic refuses it or it is too
large. Both deliveries need the same replacements, at different moments:
at-least-once after the broker refused a message for good (delivery.py);
exactly-once before a message joins a transaction (exactly_once.py), because
one refused message would abort the whole transaction and, replayed, abort it
again forever.
"""

from __future__ import annotations

import asyncio

from altlas.orchestration.serving.outcomes import Outcome
from altlas.orchestration.serving.processor import RequestProcessor
from altlas.producers.publisher import OutboundMessage, Publisher, record_size
from altlas.schemas.errors import AltlasError, ErrorCode, PayloadTooLargeError
from altlas.schemas.types import ErrorInfo


class Replacements:
    """Error results and slim dead letters standing in for messages that cannot be sent."""

    def __init__(
        self, processor: RequestProcessor, publisher: Publisher, max_message_bytes: int | None
    ) -> None:
        self.processor = processor
        self.publisher = publisher
        self.max_message_bytes = max_message_bytes

    @property
    def dead_letter_topic(self) -> str:
        """Where dead letters go: a dead letter that does not fit there loses its original value."""
        return self.processor.ctx.topics.dead_letter

    def failure(self, outcome: Outcome, error: Exception, *, default_topic: bool = False) -> Outcome:
        """An error result and dead letter answering ``outcome``'s record instead of its messages."""
        return self.processor.answers.failure(
            outcome.record, error, outcome.request, default_topic=default_topic
        )

    def slim_dead_letter(self, outcome: Outcome, info: ErrorInfo) -> OutboundMessage:
        """The dead letter without the original value: what still fits when the full one did not."""
        return self.processor.dead_letter(
            outcome.record, info, "PayloadTooLargeError", None, with_value=False
        )

    async def fit_all(self, outcomes: list[Outcome]) -> list[OutboundMessage]:
        """Every outcome's messages in order, those that cannot be sent replaced.

        Nearly every answer can be sent as it is; the rest are checked at once
        (each check may wait to learn its topic's partitions).
        """
        unclear = [i for i, outcome in enumerate(outcomes) if not self._clear(outcome)]
        fitted = dict(
            zip(unclear, await asyncio.gather(*(self._fit(outcomes[i]) for i in unclear)), strict=True)
        )
        return [msg for i, outcome in enumerate(outcomes) for msg in fitted.get(i, outcome.messages)]

    def _clear(self, outcome: Outcome) -> bool:
        """Whether ``_fit`` would return the outcome's messages unchanged, known without waiting."""
        limit = self.max_message_bytes
        return all(
            (limit is None or record_size(msg) <= limit) and self.publisher.clear(msg)
            for msg in outcome.messages
        )

    async def _fit(self, outcome: Outcome) -> list[OutboundMessage]:
        """The outcome's messages, or, when one cannot be sent, its replacement's that fit."""
        limit = self.max_message_bytes
        error: Exception | None = None
        for msg in outcome.messages:
            if limit is not None and record_size(msg) > limit:
                error = PayloadTooLargeError("result too large to publish", code=ErrorCode.RESULT_TOO_LARGE)
                break
            refused = await self.publisher.ready(msg)
            if refused is not None:
                error = AltlasError(f"{msg.topic}: {refused.reason}", code=refused.code)
                break
        if error is None:
            return outcome.messages
        replacement = self.failure(outcome, error, default_topic=not isinstance(error, PayloadTooLargeError))
        fitted = []
        for msg in replacement.messages:
            if limit is None or record_size(msg) <= limit:
                fitted.append(msg)
            elif msg.topic == self.dead_letter_topic and replacement.error is not None:
                fitted.append(self.slim_dead_letter(outcome, replacement.error))
        return fitted
