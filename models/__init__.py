"""Model runtimes, the model registry, and the manager that loads and evicts them.

Nothing here knows Kafka or the event schemas: runtimes take arrays and return
arrays, and the manager reports state changes through a callback.
"""

from altlas.models.errors import ModelError, ModelLoadError, UnknownModelError
from altlas.models.manager import ModelEvent, ModelManager
from altlas.models.registry import ModelMetadata, ModelRegistry, ModelSpec
from altlas.models.runtime import BACKENDS, ModelRuntime, create_runtime

__all__ = [
    "BACKENDS",
    "ModelError",
    "ModelEvent",
    "ModelLoadError",
    "ModelManager",
    "ModelMetadata",
    "ModelRegistry",
    "ModelRuntime",
    "ModelSpec",
    "UnknownModelError",
    "create_runtime",
]
