"""Where a request's answer may go: the reply-topic policy.

Every team publishes to the same request topics, so ``reply_topic`` is written
by whoever sent the request. Left unchecked it could direct altlas's output
into another team's topic, into altlas's own command or request topics, into
Kafka's internal topics, or into names the broker refuses for good (each one
a batch that never finishes). A reply topic must therefore fully match one of
the configured patterns, must be a legal Kafka name, and must not be one of
the topics altlas itself reads or writes (its own results topic excepted) or
an internal one (a leading underscore). Topics the broker refused at runtime
are remembered by ``Refusals`` and treated as refused until that expires.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from altlas.orchestration.app.settings import MODALITIES, Modality, TopicSettings
from altlas.producers.refusals import Refusal, Refusals
from altlas.schemas.errors import AltlasError, ErrorCode

_LEGAL = re.compile(r"[A-Za-z0-9._-]{1,249}")


class ReplyTopicRefused(AltlasError):
    """The request's reply topic is not one altlas may write to."""

    code = ErrorCode.REPLY_TOPIC_REFUSED


class ReplyPolicy:
    """Decides, per request, whether its reply topic may be used."""

    def __init__(
        self,
        modality: Modality,
        topics: TopicSettings,
        patterns: Sequence[str],
        refusals: Refusals | None = None,
    ) -> None:
        self.default = topics.results(modality)
        self.refusals = refusals if refusals is not None else Refusals()
        self._patterns = [re.compile(p) for p in patterns]
        self._own = {topics.requests(m) for m in MODALITIES} | {topics.results(m) for m in MODALITIES}
        self._own |= {topics.model_commands, topics.model_status, topics.dead_letter}
        self._own.discard(self.default)
        self._allowed: dict[str, str | None] = {}  # name -> why refused (None: allowed), bounded below

    def refusal(self, requested: str | None) -> str | None:
        """Why ``requested`` may not be used, or None when it may (no reply topic: the default)."""
        if not requested or requested == self.default:
            return None
        why = self._allowed.get(requested, "")
        if why == "":
            why = self._judge(requested)
            if len(self._allowed) < 10_000:
                self._allowed[requested] = why
        if why is not None:
            return why
        live = self.refusals.check(requested)
        return None if live is None else f"the broker refused {requested!r}: {live.reason}"

    def topic(self, requested: str | None) -> str:
        """The topic to answer on: the requested one when allowed, else the modality's default."""
        if not requested or self.refusal(requested) is not None:
            return self.default
        return requested

    def refused_answer(self, topic: str, key: bytes | None) -> Refusal | None:
        """A broker refusal of this answer (its topic, or this key there) still remembered."""
        return self.refusals.check(topic, key)

    def _judge(self, name: str) -> str | None:
        if not _LEGAL.fullmatch(name) or name in (".", ".."):
            return f"reply_topic {name!r} is not a legal Kafka topic name"
        if name.startswith("_"):
            return f"reply_topic {name!r} is internal (leading underscore)"
        if name in self._own:
            return f"reply_topic {name!r} is one of altlas's own topics"
        if not any(p.fullmatch(name) for p in self._patterns):
            return f"reply_topic {name!r} matches none of the allowed patterns (topics.reply_topics)"
        return None
