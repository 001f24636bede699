"""What a failed send means, and what it costs the messages after it.

The publisher's retry loop only waits and resends; every decision about a
failure is taken here, from one table (``refusals.verdict``): a refusal is
raised as a PermanentSendError and remembered in ``Refusals`` so that later
answers go elsewhere at once; a producer whose sequence numbers the broker no
longer accepts is replaced; a topic that keeps running out of time is refused
as a whole, so that it does not cost the time limit once per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, NoReturn, Protocol

from aiokafka.errors import ProducerClosed

from altlas.producers.refusals import (
    TIMED_OUT,
    TOPIC_TIMED_OUT,
    UNKNOWN_TOPIC,
    Fate,
    Refusals,
    Verdict,
    verdict,
)
from altlas.producers.swap import ReplaceableProducer
from altlas.schemas.errors import ErrorCode

log = logging.getLogger(__name__)

_MAX_TRACKED_TOPICS = 10_000  # strikes are forgotten past this many topics: bounded under a flood of names


class PermanentSendError(Exception):
    """A message the broker will never accept as it is; ``code`` is what its error result says."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.PUBLISH_REFUSED) -> None:
        super().__init__(message)
        self.code = code


class Addressed(Protocol):
    """The part of a message a failure is judged by."""

    @property
    def topic(self) -> str: ...

    @property
    def key(self) -> bytes | None: ...


class SendFailures:
    """Judges failed sends for one publisher; the patient topics are never refused."""

    def __init__(
        self, producers: ReplaceableProducer, refusals: Refusals, patient_topics: frozenset[str]
    ) -> None:
        self.producers = producers
        self.refusals = refusals
        self.patient_topics = patient_topics
        self._timeouts: dict[str, int] = {}  # sends given up per topic, towards refusing the topic

    async def judge(self, msg: Addressed, future: asyncio.Future[Any], exc: BaseException) -> None:
        """Act on a failure: replace a broken producer, raise a refusal; return to retry."""
        judged = verdict(exc) if not isinstance(exc, ProducerClosed) else Verdict(Fate.RETRY)
        born = self.producers.born(future)
        if judged.fate is Fate.REFUSED and msg.topic in self.patient_topics and judged.topic_wide:
            log.error("altlas cannot write its own topic %s (%s); retrying", msg.topic, exc)
        elif judged.fate is Fate.REFUSED:
            if born is not None:  # the broker refused a batch: its sequence number is spent
                await self.producers.replace(born, f"broker refused a batch ({type(exc).__name__})")
            self.refuse(msg, judged, f"{type(exc).__name__}: {exc}")
        elif judged.fate is Fate.REPLACE_PRODUCER:
            await self.producers.replace(
                born if born is not None else self.producers.generation, type(exc).__name__
            )

    def expire(self, msg: Addressed, reason: str) -> NoReturn:
        """Refuse a message whose time ran out.

        Its whole topic when no partition of it is known, or when it has run
        out of time again and again (a topic that never acknowledges would
        otherwise cost the time limit once per request id); else that message.
        """
        if not self.producers.knows(msg.topic):
            self.refuse(msg, UNKNOWN_TOPIC, reason)
        strikes = self._timeouts.get(msg.topic, 0) + 1
        self._timeouts[msg.topic] = strikes
        if len(self._timeouts) > _MAX_TRACKED_TOPICS:
            self._timeouts.clear()
        self.refuse(msg, TOPIC_TIMED_OUT if strikes >= 3 else TIMED_OUT, reason)

    def refuse(self, msg: Addressed, judged: Verdict, reason: str) -> NoReturn:
        """Remember the refusal (unless the topic is patient) and raise it."""
        if msg.topic not in self.patient_topics:
            self.refusals.refuse(msg.topic, msg.key, judged, reason)
            if judged.topic_wide:
                self.producers.forget_topic(msg.topic)
        raise PermanentSendError(f"{msg.topic}: {reason}", code=judged.code)
