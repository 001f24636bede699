"""What a failed produce means: retry it, replace the producer, or give up on that message.

A shared service meets every broker refusal sooner or later: a reply topic the
broker calls invalid or forbidden, a record over a topic's own size limit, an
idempotent producer whose sequence the broker no longer accepts. Retrying the
permanent ones for ever stalls a whole partition behind one message, so the
decision is a property of the error class, looked up in one table, never an
``if`` at a call site.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from enum import Enum
from typing import NamedTuple

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidRequiredAcksError,
    InvalidTimestampError,
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
    UnsupportedForMessageFormatError,
)

from altlas.schemas.errors import ErrorCode


class Fate(Enum):
    """What to do with a message whose send failed."""

    RETRY = "retry"  # transient: send it again, within the send time limit
    REPLACE_PRODUCER = "replace"  # the producer's state is broken: a new one resends it
    REFUSED = "refused"  # the broker will never take this message as it is


class Verdict:
    """The fate of one failure and, for a refusal, the code the replacement error result carries."""

    __slots__ = ("code", "fate", "topic_wide")

    def __init__(self, fate: Fate, code: ErrorCode = ErrorCode.PUBLISH_REFUSED, *, topic_wide: bool = False):
        self.fate = fate
        self.code = code
        self.topic_wide = topic_wide  # true when no message to that topic can succeed

    def __repr__(self) -> str:
        return f"Verdict({self.fate.name}, {self.code})"


_RETRY = Verdict(Fate.RETRY)
_REPLACE = Verdict(Fate.REPLACE_PRODUCER)
_TOO_LARGE = Verdict(Fate.REFUSED, ErrorCode.RESULT_TOO_LARGE)
_TOPIC = Verdict(Fate.REFUSED, ErrorCode.REPLY_TOPIC_REFUSED, topic_wide=True)
_REFUSED = Verdict(Fate.REFUSED)

#: Most specific class first is not needed: look-ups walk each error's MRO.
ERROR_TABLE: dict[type[BaseException], Verdict] = {
    MessageSizeTooLargeError: _TOO_LARGE,
    RecordTooLargeError: _TOO_LARGE,
    RecordListTooLargeError: _TOO_LARGE,
    InvalidTopicError: _TOPIC,
    TopicAuthorizationFailedError: _TOPIC,
    PolicyViolationError: _TOPIC,
    ClusterAuthorizationFailedError: _REFUSED,
    CorruptRecordException: _REFUSED,
    InvalidTimestampError: _REFUSED,
    InvalidRequiredAcksError: _REFUSED,
    UnsupportedForMessageFormatError: _REFUSED,
    OutOfOrderSequenceNumber: _REPLACE,
    UnknownProducerId: _REPLACE,
    InvalidProducerEpoch: _REPLACE,
    InvalidProducerIdMapping: _REPLACE,
    # Retriable on a cluster mid-election, and the only answer for a topic that does not
    # exist where auto-creation is off: retried, and refused when the time limit runs out.
    UnknownTopicOrPartitionError: _RETRY,
    KafkaTimeoutError: _RETRY,
}

#: What a retriable error becomes when its time runs out: for that message, or for its whole topic.
TIMED_OUT = Verdict(Fate.REFUSED, ErrorCode.PUBLISH_TIMED_OUT)
TOPIC_TIMED_OUT = Verdict(Fate.REFUSED, ErrorCode.PUBLISH_TIMED_OUT, topic_wide=True)
#: A reply topic whose partitions could not be learnt in time (it does not exist, or is not ours to see).
UNKNOWN_TOPIC = Verdict(Fate.REFUSED, ErrorCode.REPLY_TOPIC_REFUSED, topic_wide=True)


def verdict(exc: BaseException) -> Verdict:
    """The fate of a failed send; errors not in the table follow their own ``retriable`` flag."""
    for cls in type(exc).__mro__:
        found = ERROR_TABLE.get(cls)
        if found is not None:
            return found
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return _RETRY
    if isinstance(exc, KafkaError):
        return _REFUSED
    return _RETRY  # a connection or OS error on the way: transient until proved otherwise


class Refusal(NamedTuple):
    """Why a destination was refused, and until when that is remembered (monotonic time)."""

    code: ErrorCode
    reason: str
    until: float


class Refusals:
    """Destinations the broker refused, remembered so that later answers go elsewhere at once.

    Exactly-once replays a batch after an abort, and at-least-once re-reads
    records after a restart: without a memory, the same refused reply topic
    (or the same too-large result) would abort or stall every replay. Entries
    expire, since an operator may create the topic or grant the ACL, and the
    table is bounded, since request fields name the topics.
    """

    def __init__(
        self, *, ttl_s: float = 300.0, max_entries: int = 10_000, exempt: frozenset[str] = frozenset()
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.exempt = exempt  # altlas's own topics: never refused as a whole, their failures wait
        self._entries: OrderedDict[tuple[str, bytes | None], Refusal] = OrderedDict()

    def refuse(self, topic: str, key: bytes | None, verdict: Verdict, reason: str) -> None:
        """Remember a refusal: of the whole topic when the verdict says so, else of this key there."""
        if topic in self.exempt and verdict.topic_wide:
            return
        entry = (topic, None if verdict.topic_wide else key)
        self._entries[entry] = Refusal(verdict.code, reason, time.monotonic() + self.ttl_s)
        self._entries.move_to_end(entry)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def check(self, topic: str, key: bytes | None = None) -> Refusal | None:
        """The live refusal of ``topic`` (or of ``key`` on it), if any."""
        if not self._entries:
            return None
        now = time.monotonic()
        for entry in ((topic, None), (topic, key)) if key is not None else ((topic, None),):
            found = self._entries.get(entry)
            if found is not None:
                if found.until > now:
                    return found
                del self._entries[entry]
        return None

    def __len__(self) -> int:
        return len(self._entries)
