"""The requests this instance's lanes hold, so a model command can end one.

A ``ModelCommand`` ``cancel`` names a model and ``params.request_id``; every
instance gets it, and each lane of that model that holds the id ends it. How
depends on where the request is: still in the lane's queue, it is answered at
once; handed to a continuously batching runtime (llama.cpp), it is stopped
within one decode step and answered with what it had generated; inside a fixed
batch (vision, audio), it cannot be interrupted and finishes. Either way its
answer is an error result, never silence.

Only a continuously batching lane registers each request (``hold``): how to
stop it changes as it leaves the queue for a decode loop. A fixed-batch lane
registers nothing per request, since nothing it hands over can be stopped; it
is known here once (``add_lane``) and a cancel asks it to look through its
queue and its running batches for the id. Nothing here knows Kafka or models:
the lanes say how to end what they hold, the command handler asks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from altlas.models.registry import ModelSpec
from altlas.schemas.errors import AltlasError, ErrorCode

#: How many ended request ids are remembered for fallback chains (a few KiB).
_REMEMBERED = 4096

#: Ends one request, with a reason that goes into its error message.
Stop = Callable[[str], None]


class QueuedLane(Protocol):
    """A fixed-batch lane: its requests are not registered one by one, a cancel asks it for the id."""

    def cancel_queued(self, request_id: str, reason: str) -> int:
        """Answer the queued requests with this id as cancelled; count them and those in running batches."""
        ...


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
    """Request id -> the held requests with that id (one per model attempt, usually one), and the
    fixed-batch lanes by model id, which hold requests without registering them."""

    def __init__(self) -> None:
        self._held: dict[str, list[Held]] = {}
        self._lanes: dict[str, list[tuple[ModelSpec, QueuedLane]]] = {}
        # Ids a command ended lately, so a fallback chain does not hand them to its next model.
        self._ended: OrderedDict[str, None] = OrderedDict()

    def hold(self, spec: ModelSpec, request_id: str, stop: Stop | None) -> Held:
        """Register a request queued on ``spec``'s lane; ``stop`` answers it while it is queued."""
        held = Held(self, spec, request_id, stop)
        self._held.setdefault(request_id, []).append(held)
        return held

    def add_lane(self, spec: ModelSpec, lane: QueuedLane) -> None:
        """Make a fixed-batch lane of ``spec`` reachable by cancels (once per lane, not per request)."""
        self._lanes.setdefault(spec.id, []).append((spec, lane))

    def drop_lane(self, spec: ModelSpec, lane: QueuedLane) -> None:
        """Forget a closed lane (idempotent)."""
        lanes = self._lanes.get(spec.id, [])
        self._lanes[spec.id] = [(s, known) for s, known in lanes if known is not lane]
        if not self._lanes[spec.id]:
            del self._lanes[spec.id]

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
        count = len(reached)
        for spec, lane in self._lanes.get(model_id, ()):
            if version is None or spec.version == version:
                count += lane.cancel_queued(request_id, reason)
        if count:
            self._ended[request_id] = None
            while len(self._ended) > _REMEMBERED:
                self._ended.popitem(last=False)
        return count

    def ended(self, request_id: str) -> bool:
        """Whether a command ended this request (recently): nothing more should run for it."""
        return request_id in self._ended

    def __len__(self) -> int:
        """Requests registered one by one (those of continuously batching lanes)."""
        return sum(len(same) for same in self._held.values())
