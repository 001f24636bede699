"""Broker refusals and the reply-topic policy: fast specifications, no broker."""

from __future__ import annotations

import time

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    UnknownTopicOrPartitionError,
)

from altlas.orchestration.app.settings import TopicSettings
from altlas.orchestration.serving.replies import ReplyPolicy
from altlas.producers.refusals import Fate, Refusals, verdict
from altlas.schemas.errors import ErrorCode


@pytest.mark.parametrize(
    ("error", "fate", "code", "topic_wide"),
    [
        (InvalidTopicError(), Fate.REFUSED, ErrorCode.REPLY_TOPIC_REFUSED, True),
        (TopicAuthorizationFailedError("t"), Fate.REFUSED, ErrorCode.REPLY_TOPIC_REFUSED, True),
        (MessageSizeTooLargeError(), Fate.REFUSED, ErrorCode.RESULT_TOO_LARGE, False),
        (RecordTooLargeError(), Fate.REFUSED, ErrorCode.RESULT_TOO_LARGE, False),
        (CorruptRecordException(), Fate.REFUSED, ErrorCode.PUBLISH_REFUSED, False),
        (OutOfOrderSequenceNumber(), Fate.REPLACE_PRODUCER, None, False),
        (UnknownProducerId(), Fate.REPLACE_PRODUCER, None, False),
        (UnknownTopicOrPartitionError(), Fate.RETRY, None, False),
        (NotLeaderForPartitionError(), Fate.RETRY, None, False),
        (NotEnoughReplicasError(), Fate.RETRY, None, False),
        (KafkaConnectionError(), Fate.RETRY, None, False),
        (KafkaTimeoutError(), Fate.RETRY, None, False),
        (ConnectionResetError(), Fate.RETRY, None, False),
    ],
)
def test_each_error_has_one_fate(
    error: BaseException, fate: Fate, code: ErrorCode | None, topic_wide: bool
) -> None:
    judged = verdict(error)
    assert judged.fate is fate
    if code is not None:
        assert judged.code is code
    assert judged.topic_wide is topic_wide


def test_an_unlisted_broker_error_follows_its_retriable_flag() -> None:
    from aiokafka.errors import InvalidTxnState, RequestTimedOutError

    assert verdict(RequestTimedOutError()).fate is Fate.RETRY  # retriable = True
    assert verdict(InvalidTxnState()).fate is Fate.REFUSED  # not retriable


def test_refusals_are_remembered_per_topic_or_per_key_and_expire() -> None:
    refusals = Refusals(ttl_s=0.2, exempt=frozenset({"own"}))
    refusals.refuse("bad", b"k", verdict(InvalidTopicError()), "invalid")
    refusals.refuse("small", b"k1", verdict(MessageSizeTooLargeError()), "too large")
    refusals.refuse("own", b"k", verdict(TopicAuthorizationFailedError("own")), "acl")
    assert refusals.check("bad") is not None and refusals.check("bad", b"other") is not None
    assert refusals.check("small", b"k1") is not None
    assert refusals.check("small", b"k2") is None and refusals.check("small") is None
    assert refusals.check("own") is None  # altlas's own topics are never refused as a whole
    time.sleep(0.25)
    assert refusals.check("bad") is None and refusals.check("small", b"k1") is None


def test_refusals_are_bounded() -> None:
    refusals = Refusals(max_entries=3)
    for i in range(10):
        refusals.refuse(f"t{i}", None, verdict(InvalidTopicError()), "x")
    assert len(refusals) == 3 and refusals.check("t9") is not None and refusals.check("t0") is None


@pytest.fixture
def policy() -> ReplyPolicy:
    return ReplyPolicy("vision", TopicSettings(), TopicSettings().reply_topics)


@pytest.mark.parametrize(
    "name",
    [
        "x\n",  # re.match with a $ anchor let a trailing newline through
        "ai.results.mine\n",
        "ai.models.commands\n",
        "__consumer_offsets",
        "_schemas",
        "connect-offsets",
        "another-teams-topic",
        "ai.requests.vision",
        "ai.requests.text",
        "ai.models.commands",
        "ai.models.status",
        "ai.deadletter",
        "ai.results.text",  # another modality's results: its readers expect other records
        "ai.results.",
        "ai.results.a b",
        "ai.results." + "x" * 300,
        ".",
        "..",
        "ai.results.ü",
    ],
)
def test_reply_topics_outside_the_policy_are_refused(policy: ReplyPolicy, name: str) -> None:
    assert policy.refusal(name) is not None
    assert policy.topic(name) == "ai.results.vision"


@pytest.mark.parametrize("name", [None, "", "ai.results.vision", "ai.results.team-a", "ai.results.team_b.v2"])
def test_reply_topics_inside_the_policy_are_used(policy: ReplyPolicy, name: str | None) -> None:
    assert policy.refusal(name) is None
    assert policy.topic(name) == (name or "ai.results.vision")


def test_a_topic_the_broker_refused_is_refused_until_that_expires() -> None:
    refusals = Refusals(ttl_s=0.2)
    policy = ReplyPolicy("vision", TopicSettings(), [r"replies\..+"], refusals)
    assert policy.refusal("replies.a") is None
    refusals.refuse("replies.a", None, verdict(TopicAuthorizationFailedError("replies.a")), "denied")
    assert "denied" in (policy.refusal("replies.a") or "")
    assert policy.topic("replies.a") == "ai.results.vision"
    time.sleep(0.25)
    assert policy.refusal("replies.a") is None


def test_patterns_match_whole_names() -> None:
    policy = ReplyPolicy("audio", TopicSettings(), [r"team-a\.[a-z]+"])
    assert policy.refusal("team-a.out") is None
    assert policy.refusal("team-a.out.extra") is not None
    assert policy.refusal("x.team-a.out") is not None
