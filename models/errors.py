"""Errors raised by model runtimes and the manager.

``models`` imports nothing else of altlas, so these carry their wire code as a
plain string; the values are members of ``altlas.schemas.ErrorCode`` (a test
checks that), which is how orchestration turns them into error results.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base of model-side failures."""

    code = "MODEL_FAILED"
    retriable = False


class UnknownModelError(ModelError):
    """No registry entry matches the requested id (or id@version)."""

    code = "UNKNOWN_MODEL"


class ModelLoadError(ModelError):
    """The model's files could not be loaded by its backend."""

    code = "MODEL_UNAVAILABLE"
    retriable = True


class ModelBudgetError(ModelError):
    """The model does not fit the memory budget, even after evicting idle models."""

    code = "MODEL_UNAVAILABLE"
    retriable = True


class InferenceError(ModelError):
    """The backend raised while running a batch."""

    code = "MODEL_FAILED"


class GenerationCancelled(ModelError):
    """Nobody waits for this output any more (its time budget ran out): generation stopped early."""

    code = "DEADLINE_EXCEEDED"
    # What was generated before it stopped, for the error result.
    partial_text: str = ""
    completion_tokens: int = 0


class InvalidInputError(ModelError):
    """An input does not match what the model expects (shape, dtype, size)."""

    code = "INVALID_PAYLOAD"
