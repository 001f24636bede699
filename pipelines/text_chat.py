"""``text.chat``: a JSON array of ``{role, content}`` messages in, the assistant's reply out.

The messages are rendered with the model's own chat template (from the GGUF
metadata, or ``params.chat_template`` in the registry), then generated exactly
like ``text.generate``, streaming included.
"""

from __future__ import annotations

import json

from altlas.models.llama_text import GenerationRequest
from altlas.pipelines.text_generation import TextGenerationPipeline, text_payload
from altlas.schemas.errors import InvalidRequestError

ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_MESSAGES = 1024


def parse_messages(text: str) -> tuple[dict[str, str], ...]:
    """Validated messages; anything else is an INVALID_PAYLOAD with the reason."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"chat payload is not JSON: {exc}") from None
    if not isinstance(doc, list) or not doc:
        raise InvalidRequestError("chat payload must be a non-empty JSON array of {role, content} messages")
    if len(doc) > MAX_MESSAGES:
        raise InvalidRequestError(f"chat payload has {len(doc)} messages; at most {MAX_MESSAGES}")
    messages = []
    for i, message in enumerate(doc):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"message {i} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidRequestError(f"message {i} has role {role!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise InvalidRequestError(f"message {i} needs a string content")
        try:  # JSON lets "\\ud800" through; it cannot be encoded, so the model could never take it
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                f"message {i} content is not valid Unicode (a lone surrogate)"
            ) from None
        messages.append({"role": str(role), "content": content})
    return tuple(messages)


class TextChatPipeline(TextGenerationPipeline):
    """``text.chat`` on a llama.cpp model with a chat template."""

    task = "text.chat"

    def request(self, payload: bytes | str) -> GenerationRequest:
        """Messages instead of a prompt."""
        return GenerationRequest(messages=parse_messages(text_payload(payload, self.limits)))
