"""The requests this instance's lanes hold, by request id, so a model command can end one.

A ``ModelCommand`` ``cancel`` names a model and ``params.request_id``; every
instance gets it, and each lane of that model that holds the id ends it. How
depends on where the request is: still in the lane's queue, it is answered at
once; handed to a continuously batching runtime (llama.cpp), it is stopped
within one decode step and answered with what it had generated; inside a fixed
batch (vision, audio), it cannot be interrupted and finishes. Either way its
answer is an error result, never silence. Nothing here knows Kafka or models:
the lanes register how to stop each request, the command handler asks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from altlas.models.registry import ModelSpec
from altlas.schemas.errors import AltlasError, ErrorCode

#: How many ended request ids are remembered for fallback chains (a few KiB).
_REMEMBERED = 4096

#: Ends one request, with a reason that goes into its error message.
Stop = Callable[[str], None]


class RequestCancelled(AltlasError):
    """A model command ended the request; like a passed deadline, nobody waits for more of it."""

    code = ErrorCode.DEADLINE_EXCEEDED


class Held:
    """One request a lane holds, and how to end it (which changes as it leaves the queue)."""

    __slots__ = ("_registry", "model_id", "model_version", "reason", "request_id", "stop")

    def __init__(self, registry: InFlight, spec: ModelSpec, request_id: str, stop: Stop | None) -> None:
        self._registry = registry
        self.model_id = spec.id
        self.model_version = spec.version
        self.request_id = request_id
        self.stop = stop
        self.reason: str | None = None  # set once a command asked to end it

    def cancel(self, reason: str) -> None:
        """End the request now if it can be ended, else as soon as it is handed over."""
        if self.reason is None:
            self.reason = reason
            if self.stop is not None:
                self.stop(reason)

    def handed_over(self, stop: Stop | None) -> None:
        """The request left the queue; from now on ``stop`` ends it (None: nothing can)."""
        self.stop = stop
        if stop is not None and self.reason is not None:  # cancelled on its way to the runtime
            stop(self.reason)

    def release(self) -> None:
        """The request was answered: a later command for it finds nothing here."""
        self._registry.release(self)


class InFlight:
    """Request id -> the held requests with that id (one per model attempt, usually one)."""

    def __init__(self) -> None:
        self._held: dict[str, list[Held]] = {}
        # Ids a command ended lately, so a fallback chain does not hand them to its next model.
        self._ended: OrderedDict[str, None] = OrderedDict()

    def hold(self, spec: ModelSpec, request_id: str, stop: Stop | None) -> Held:
        """Register a request queued on ``spec``'s lane; ``stop`` answers it while it is queued."""
        held = Held(self, spec, request_id, stop)
        self._held.setdefault(request_id, []).append(held)
        return held

    def release(self, held: Held) -> None:
        """Forget one held request (idempotent)."""
        same = self._held.get(held.request_id)
        if same is not None and held in same:
            same.remove(held)
            if not same:
                del self._held[held.request_id]

    def cancel(self, model_id: str, request_id: str, reason: str, *, version: str | None = None) -> int:
        """End every held request with this id on this model (any version unless one is named).

        Returns how many were reached; 0 for an id this instance does not hold,
        which is harmless: other instances may hold it, or it already ended.
        """
        reached = [
            held
            for held in self._held.get(request_id, ())
            if held.model_id == model_id and (version is None or held.model_version == version)
        ]
        for held in reached:
            held.cancel(reason)
        if reached:
            self._ended[request_id] = None
            while len(self._ended) > _REMEMBERED:
                self._ended.popitem(last=False)
        return len(reached)

    def ended(self, request_id: str) -> bool:
        """Whether a command ended this request (recently): nothing more should run for it."""
        return request_id in self._ended

    def __len__(self) -> int:
        return sum(len(same) for same in self._held.values())
