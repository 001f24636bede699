"""Which model(s) answer a request: explicit ids, routes, and selection strategies.

A request may name a model (``id``, ``id@version``), a registry route
(``route:NAME``), or only a task, optionally with ``params.strategy`` and a
candidate list in ``params.models``. The planner turns that into a Plan: one
model, an ordered fallback chain, or ensemble members. Strategies use what
``ModelHealth`` has measured and the registry declares; open circuits are
skipped. Choosing a model also starts loading it, so the load overlaps with
payload decoding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from altlas.models.errors import UnknownModelError
from altlas.models.manager import ModelManager
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.orchestration.routing.health import ModelHealth
from altlas.orchestration.routing.task_detection import detect_task
from altlas.pipelines.base import Pipeline
from altlas.schemas.errors import AltlasError, ErrorCode, InvalidRequestError
from altlas.schemas.types import AnyRequest

log = logging.getLogger(__name__)

STRATEGIES = ("default", "performance", "accuracy", "cost", "fallback", "ensemble")


@dataclass
class Plan:
    """How one request will be answered."""

    task: str  # "<modality>.<task>"
    pipeline: Pipeline
    strategy: str
    specs: list[ModelSpec]
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """single, fallback or ensemble."""
        if self.strategy == "ensemble" and len(self.specs) > 1:
            return "ensemble"
        if self.strategy == "fallback" and len(self.specs) > 1:
            return "fallback"
        return "single"


class Planner:
    """Builds plans for one process."""

    def __init__(
        self,
        registry: ModelRegistry,
        pipelines: dict[str, Pipeline],
        health: ModelHealth,
        manager: ModelManager,
        *,
        default_strategies: dict[str, str] | None = None,
        load_penalty_ms: float = 200.0,
        max_models: int = 8,
        demand: Callable[[str], int] | None = None,
    ) -> None:
        self.registry = registry
        self.pipelines = pipelines
        self.health = health
        self.manager = manager
        self.default_strategies = dict(default_strategies or {})
        self.load_penalty_ms = load_penalty_ms
        self.max_models = max_models
        self._preloading: set[str] = set()
        self.demand: Callable[[str], int] = demand or (lambda key: 0)  # the lanes' Demand.pending: backlog

    def available_tasks(self) -> set[str]:
        """Tasks with a pipeline and at least one model here."""
        return {task for task in self.pipelines if self.registry.for_task(task)}

    def plan(self, modality: str, request: AnyRequest, *, detected: tuple[str, str] | None = None) -> Plan:
        """The plan for ``request``; raises AltlasError/UnknownModelError when there is none.

        ``detected`` is the (task, reason) of an ``auto`` request when the
        caller already ran task detection (off the event loop: it decodes a
        thumbnail of the payload).
        """
        params = request.params
        attributes: dict[str, str] = {}
        task = str(request.task)
        ref = request.model
        explicit: ModelSpec | None = None
        route = None
        if ref.startswith("route:"):
            route = self.registry.route(ref.removeprefix("route:"))
            attributes["route"] = route.name
            if not route.task.startswith(f"{modality}."):
                raise AltlasError(
                    f"route {route.name} serves {route.task}, not {modality}", code=ErrorCode.UNKNOWN_MODEL
                )
            if task not in ("auto", route.task.split(".", 1)[1]):
                raise AltlasError(
                    f"route {route.name} serves {route.task}, not {modality}.{task}",
                    code=ErrorCode.UNKNOWN_MODEL,
                )
            task = route.task.split(".", 1)[1]
        elif ref:
            explicit = self.registry.get(ref)
            if task == "auto":
                own = [t for t in explicit.tasks if t.startswith(f"{modality}.")]
                task = (own or [explicit.task])[0].split(".", 1)[1]
        if task == "auto":
            task, reason = detected or detect_task(modality, request.payload, params, self.available_tasks())
            attributes["detected_task"] = task
            attributes["detected_reason"] = reason
        full = f"{modality}.{task}"
        pipeline = self.pipelines.get(full)
        if pipeline is None:
            raise AltlasError(f"no pipeline serves {modality} task {task!r}", code=ErrorCode.UNKNOWN_TASK)
        if explicit is not None:
            if not explicit.serves(full):
                raise AltlasError(
                    f"model {explicit.key} serves {', '.join(explicit.tasks)}, not {full}",
                    code=ErrorCode.UNKNOWN_MODEL,
                )
            if self.health.is_open(explicit):
                raise AltlasError(
                    f"model {explicit.key} is skipped: its circuit is open", code=ErrorCode.MODEL_UNAVAILABLE
                )
            plan = Plan(full, pipeline, "explicit", [explicit], attributes)
        else:
            strategy = str(
                params.get("strategy")
                or (route.strategy if route else None)
                or self.default_strategies.get(full, "default")
            )
            if strategy not in STRATEGIES:
                raise InvalidRequestError(
                    f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}",
                    code=ErrorCode.INVALID_PARAMS,
                )
            candidates = self._candidates(full, route.candidates if route else None, params.get("models"))
            plan = Plan(
                full, pipeline, strategy, self._choose(full, strategy, candidates, params), attributes
            )
            if strategy != "default":
                attributes["strategy"] = strategy
        for spec in plan.specs[:1] if plan.kind == "fallback" else plan.specs:
            self._preload(spec)
        return plan

    # ------------------------------------------------------------ candidates and strategies
    def _candidates(self, task: str, route: Sequence[str] | None, requested: object) -> list[ModelSpec]:
        if requested is not None:
            if not isinstance(requested, list) or not requested:
                raise InvalidRequestError(
                    "param models must be a non-empty list of model ids", code=ErrorCode.INVALID_PARAMS
                )
            if not all(isinstance(r, str) for r in requested):
                raise InvalidRequestError(
                    "param models must be a list of model ids", code=ErrorCode.INVALID_PARAMS
                )
            refs: Sequence[str] = list(dict.fromkeys(requested))  # each member once
            if len(refs) > self.max_models:
                raise InvalidRequestError(
                    f"param models names {len(refs)} models; at most {self.max_models} may serve a request",
                    code=ErrorCode.INVALID_PARAMS,
                )
        elif route:
            refs = route
        else:
            found = self.registry.for_task(task)
            default = self.registry.default_for(task)
            if default is not None:  # the configured default leads (fallback order, ties)
                found = [default] + [s for s in found if s.key != default.key]
            return found
        specs = [self.registry.get(r) for r in refs]
        for spec in specs:
            if not spec.serves(task):
                raise AltlasError(f"model {spec.key} does not serve {task}", code=ErrorCode.UNKNOWN_MODEL)
        return specs

    def _choose(self, task: str, strategy: str, candidates: list[ModelSpec], params: dict) -> list[ModelSpec]:  # type: ignore[type-arg]
        if not candidates:
            raise UnknownModelError(f"no model serves {task}")
        if strategy in ("fallback", "ensemble"):
            return candidates
        usable = [s for s in candidates if not self.health.is_open(s)]
        if not usable:
            raise AltlasError(
                f"every model for {task} has an open circuit: {', '.join(s.key for s in candidates)}",
                code=ErrorCode.MODEL_UNAVAILABLE,
            )
        if strategy == "default":
            return [usable[0]]
        if strategy == "performance":
            backlog = sum(self.demand(s.key) for s in candidates)
            return [min(usable, key=lambda s: self._expected_ms(s, backlog))]
        if strategy == "accuracy":
            return [
                max(usable, key=lambda s: s.metadata.accuracy if s.metadata.accuracy is not None else -1.0)
            ]
        floor = _float_param(params, "min_accuracy")
        good = [s for s in usable if floor is None or (s.metadata.accuracy or 0.0) >= floor]
        if not good:
            raise AltlasError(
                f"no model for {task} reaches min_accuracy {floor}", code=ErrorCode.UNKNOWN_MODEL
            )
        return [min(good, key=lambda s: (s.metadata.cost, -(s.metadata.accuracy or 0.0)))]

    def _expected_ms(self, spec: ModelSpec, backlog: int) -> float:
        """When a new request would be answered: per-item latency behind the requests
        already waiting for the model, plus its load cost shared over the backlog.

        Counting the waiting requests spreads a backlog over the candidates in
        proportion to their speed instead of piling it onto one. With one
        request in sight a loaded model wins unless the other is much faster;
        with a backlog, loading the faster model pays for itself. A model not
        yet timed and with nothing waiting counts as free: it gets a probe and
        is then judged by measurement (a pessimistic declaration would
        otherwise keep a faster model from ever being measured); until it is
        timed, its declaration stands.
        """
        waiting = self.demand(spec.key)
        latency = self.health.latency_ms(spec)
        if waiting == 0 and not self.health.measured(spec):
            latency = 0.0
        expected = latency * (1 + waiting)
        if self.manager.is_loaded(spec.key):
            return expected
        load = max(self.load_penalty_ms, self.manager.reload_cost_ms(spec))
        return expected + load / (1 + backlog)

    def _preload(self, spec: ModelSpec) -> None:
        """Start loading a model as soon as its requests arrive, not when their batch runs."""
        key = spec.key
        if key in self._preloading or self.manager.is_loaded(key) or self.health.is_open(spec):
            return
        self._preloading.add(key)

        async def load() -> None:
            try:
                await self.manager.load(spec.key)
            finally:
                self._preloading.discard(spec.key)

        task = asyncio.get_running_loop().create_task(load())
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("preload failed: %s", task.exception())


def _float_param(params: dict, name: str) -> float | None:  # type: ignore[type-arg]
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequestError(f"param {name} must be a number", code=ErrorCode.INVALID_PARAMS)
    try:
        return float(value)
    except ValueError:
        raise InvalidRequestError(f"param {name} must be a number", code=ErrorCode.INVALID_PARAMS) from None
