"""The ``altlas`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from altlas.orchestration.app.settings import Settings, load_settings

app = typer.Typer(
    help="altlas: Kafka-native AI inference orchestrator.", no_args_is_help=True, add_completion=False
)
broker_app = typer.Typer(
    help="A local single-node Kafka (KRaft) from Maven Central jars.", no_args_is_help=True
)
models_app = typer.Typer(help="The model registry and model residency.", no_args_is_help=True)
schemas_app = typer.Typer(help="The Avro contracts.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")
app.add_typer(models_app, name="models")
app.add_typer(schemas_app, name="schemas")
docs_app = typer.Typer(help="Generated documentation.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")

console = Console(stderr=True)
# Piped output keeps whole table cells (rich would otherwise wrap at 80 columns).
out = Console() if sys.stdout.isatty() else Console(width=200)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Settings YAML file.")]  # noqa: UP045
BootstrapOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--bootstrap-servers", "-b", help="Kafka bootstrap servers (overrides settings)."),
]
RegistryOpt = Annotated[Optional[Path], typer.Option("--registry", help="Model registry YAML.")]  # noqa: UP045
ServeRegistryOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--registry", help="Model registry YAML; `none` serves no model (default: the starter registry)."
    ),
]


def _settings(config: Path | None, bootstrap: str | None = None, registry: Path | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["kafka"] = {"bootstrap_servers": bootstrap}
    if registry:
        overrides["models"] = {"registry": str(registry)}
    settings = load_settings(config, **overrides)
    from altlas.orchestration.observability.logs import secrets_of, setup_logging

    setup_logging(settings.log.level, settings.log.format, secrets_of(settings))
    return settings


# ---------------------------------------------------------------- run
@app.command()
def run(
    config: ConfigOpt = None, bootstrap_servers: BootstrapOpt = None, registry: ServeRegistryOpt = None
) -> None:
    """Serve: consume requests, run models, publish results, until SIGINT/SIGTERM."""
    from altlas.orchestration.app.service import serve

    settings = _settings(config, bootstrap_servers, registry)
    if settings.models.registry == Path("none"):
        settings.models.registry = None
    elif settings.models.registry is None:
        settings.models.registry = _starter_registry()
    code = asyncio.run(serve(settings))
    if code:
        raise typer.Exit(code)


def _starter_registry(*, announce: bool = True) -> Path:
    """The starter registry's file, fetching its models first (with progress) where needed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from altlas.orchestration.app import starter

    with Progress(
        "{task.description}", BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as bar:
        job = bar.add_task("starter models", total=None)

        def progress(model_id: str, done: int, total: int) -> None:
            what = f"starter models: fetching {model_id} once" if model_id else "starter models"
            bar.update(job, description=what, completed=done, total=total)

        return starter.registry_file(progress, announce=announce)


# ---------------------------------------------------------------- broker
@broker_app.command("up")
def broker_up(
    config: ConfigOpt = None,
    kafka_version: Annotated[str | None, typer.Option(help="Kafka version (default from settings).")] = None,
    brokers: Annotated[
        int, typer.Option(min=1, help="Nodes; 2 or more start a KRaft cluster (replication 3, min ISR 2).")
    ] = 1,
) -> None:
    """Start a local broker (or cluster) on free ports and print `bootstrap=127.0.0.1:PORT[,...]`."""
    from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
    from altlas.orchestration.devtools.localkafka import BrokerState, LocalBroker

    settings = _settings(config)
    lb = settings.local_broker
    if brokers > 1:
        from altlas.orchestration.devtools.localcluster import cluster_up

        with console.status(f"starting a {brokers}-node Kafka cluster..."):
            print(f"bootstrap={cluster_up(lb, kafka_version or lb.kafka_version, brokers)}")
        return
    state_file = lb.state_dir / "state.json"
    if state_file.exists():
        state = BrokerState(**json.loads(state_file.read_text()))
        from altlas.orchestration.devtools.localkafka import _alive

        if _alive(state.pid):
            print(f"bootstrap={state.bootstrap}")
            return
    with console.status("starting Kafka (first run fetches jars from Maven Central)..."):
        broker = LocalBroker(
            KafkaDistribution(kafka_version or lb.kafka_version, lb.scala_version),
            data_dir=lb.state_dir / "data",
            heap=lb.heap,
            jvm_opts=lb.jvm_opts,
        )
        if broker.data_dir.exists():
            import shutil

            shutil.rmtree(broker.data_dir)
        broker.data_dir.mkdir(parents=True)
        broker.start()
        broker.save_state(state_file)
    print(f"bootstrap={broker.bootstrap}")


@broker_app.command("down")
def broker_down(config: ConfigOpt = None) -> None:
    """Stop the local broker (and cluster) started by `broker up` and delete its data."""
    import shutil

    from altlas.orchestration.devtools.localcluster import cluster_down
    from altlas.orchestration.devtools.localkafka import BrokerState, stop_process

    settings = _settings(config)
    state_file = settings.local_broker.state_dir / "state.json"
    if pids := cluster_down(settings.local_broker.state_dir):
        console.print(f"stopped cluster pids {', '.join(map(str, pids))}")
    if not state_file.exists():
        if not pids:
            console.print("no local broker is running")
        return
    state = BrokerState(**json.loads(state_file.read_text()))
    stop_process(state.pid)
    shutil.rmtree(state.data_dir, ignore_errors=True)
    state_file.unlink()
    console.print(f"stopped broker pid {state.pid}")


# ---------------------------------------------------------------- send
@app.command()
def send(
    target: Annotated[
        str, typer.Argument(help="A file (image, audio, text), a folder of such files, or literal text.")
    ],
    *,
    task: Annotated[
        str, typer.Option("--task", "-t", help="Task, e.g. classify, detect, generate, auto.")
    ] = "auto",
    model: Annotated[str, typer.Option("--model", "-m", help="Model id or id@version.")] = "",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value (repeatable).")] = None,
    modality: Annotated[str | None, typer.Option(help="text, vision or audio (sniffed by default).")] = None,
    raw: Annotated[bool, typer.Option("--json", help="Print the raw result(s) as JSON.")] = False,
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Save speech here (a folder when sending a folder)."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results.")] = 60.0,
    config: ConfigOpt = None,
    bootstrap_servers: BootstrapOpt = None,
) -> None:
    """Send requests (the task is picked from the payload) and print the answers."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from altlas.orchestration.app.kafka_clients import client_kwargs
    from altlas.orchestration.app.service import build_codec
    from altlas.orchestration.clients import sending
    from altlas.orchestration.clients.client import AltlasClient

    settings = _settings(config, bootstrap_servers)
    if modality not in (None, "text", "vision", "audio"):
        raise typer.BadParameter(f"unknown modality {modality}")
    params = dict(_parse_param(p) for p in (param or []))
    try:
        items = sending.outgoing(target, task=task, model=model, params=params, modality=modality)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    many = Path(target).is_dir()

    async def go(on_result: Any) -> dict[str, Any]:
        async with AltlasClient(
            client_kwargs(settings.kafka, client_suffix="cli"), build_codec(settings), settings.topics
        ) as c:
            return await sending.exchange(c, items, timeout, on_result)

    started = time.perf_counter()
    if many:
        with Progress(
            "{task.description}", BarColumn(), MofNCompleteColumn(), console=console, transient=True
        ) as bar:
            job = bar.add_task(f"answers for {target}", total=len(items))
            results = asyncio.run(go(lambda _: bar.advance(job)))
    else:
        results = asyncio.run(go(None))
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    answered = [(i.source, results[i.request.request_id]) for i in items if i.request.request_id in results]
    if raw:
        for source, result in answered:
            doc = sending.jsonable(result, source=source, round_trip_ms=elapsed_ms)
            if many:
                print(json.dumps(doc))  # one result per line
            else:
                out.print_json(json.dumps(doc))
    else:
        _print_answers(items, results, elapsed_ms, many)
    if output is not None:
        for path in sending.save_speech(answered, output, many=many):
            console.print(f"saved {path}")
    if len(answered) < len(items):
        console.print(
            f"[red]{len(items) - len(answered)} of {len(items)} got no result within {timeout}s[/red]"
        )
        raise typer.Exit(1)
    if any(result.status.value != "ok" for _, result in answered):
        raise typer.Exit(2)


def _print_answers(items: list[Any], results: dict[str, Any], elapsed_ms: float, many: bool) -> None:
    """One row per request: what was sent, the task altlas picked, the model and its answer."""
    from altlas.orchestration.clients.sending import gist

    table = Table("sent", "task", "model", "answer", "ms")
    for item in items:
        result = results.get(item.request.request_id)
        if result is None:
            table.add_row(item.source[:40], "", "", "[red]no result[/red]", "")
            continue
        model = f"{result.model_id}@{result.model_version}" if result.model_id else ""
        answer = gist(result)
        if many and len(answer) > 100:  # one line per file
            answer = answer[:99] + "…"
        if result.status.value != "ok":
            answer = f"[red]{answer}[/red]"
        table.add_row(item.source[:40], result.task, model, answer, f"{result.timings.total_ms:.0f}")
    out.print(table)
    if not many:
        result = results.get(items[0].request.request_id)
        reason = result.attributes.get("detected_reason") if result is not None else None
        if reason:
            console.print(f"task picked because {reason}")
    console.print(f"{len(results)} of {len(items)} answered in {elapsed_ms:.0f} ms")


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise typer.BadParameter(f"--param wants key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = [str(v) for v in value]
    elif isinstance(value, dict):
        value = raw
    return key, value


# ---------------------------------------------------------------- models
@models_app.command("list")
def models_list(
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
    starter: Annotated[
        bool, typer.Option("--starter", help="The starter registry (served when none is configured).")
    ] = False,
) -> None:
    """Models in the registry."""
    if starter:
        _starter_list()
        return
    from altlas.orchestration.app.service import load_registry

    reg = load_registry(_settings(config, registry=registry))
    table = Table("id", "version", "task", "backend", "max batch", "path")
    for spec in reg:
        table.add_row(
            spec.id, spec.version, spec.task, spec.backend, str(spec.metadata.max_batch), str(spec.path or "")
        )
    out.print(table)


def _starter_list() -> None:
    """The starter models, whether each can be served here, and their measured figures."""
    from altlas.orchestration.app import starter

    _, left_out = starter.usable()
    figures = starter.measured()
    table = Table("id", "tasks", "backend", "accuracy", "cost", "latency ms", "here", "model")
    for model in starter.STARTER:
        f = figures.get(model.id, {})
        table.add_row(
            model.id,
            ", ".join(model.tasks),
            model.backend,
            *(f"{f[k]:g}" if k in f else "" for k in ("accuracy", "cost", "latency_ms")),
            left_out.get(model.id, "[green]yes[/green]"),
            model.about,
        )
    out.print(table)
    defaults = ", ".join(f"{task}={ref}" for task, ref in starter.DEFAULTS.items())
    console.print(f"defaults: {defaults}")
    console.print("cost: CPU ms per request; latency: wall ms per request at batch 1 (bench/starter.py)")


@models_app.command("export-starter")
def models_export_starter(
    directory: Annotated[Path, typer.Argument(help="Where to write registry.yaml and the model files.")],
    link: Annotated[bool, typer.Option("--link", help="Symlink the model files instead of copying.")] = False,
) -> None:
    """Write the starter registry as an editable YAML beside the model files: your own registry's start."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from altlas.orchestration.app import starter

    with Progress(
        "{task.description}", BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as bar:
        job = bar.add_task("starter models", total=None)
        path = starter.export(
            directory,
            link=link,
            progress=lambda model_id, done, total: bar.update(
                job, description=f"starter models {model_id}", completed=done, total=total
            ),
        )
    console.print(f"wrote {path}; serve it with: altlas run --registry {path}")


@models_app.command("fetch-starter", hidden=True)
def models_fetch_starter() -> None:
    """Fetch the starter models into the cache now (an image build does this once)."""
    console.print(f"starter registry: {_starter_registry(announce=False)}")


def _command(
    action: str,
    model_ref: str,
    config: Path | None,
    bootstrap: str | None,
    wait: float,
    *,
    params: dict[str, str] | None = None,
) -> None:
    from altlas.orchestration.app.kafka_clients import client_kwargs
    from altlas.orchestration.app.service import build_codec
    from altlas.orchestration.clients.client import AltlasClient
    from altlas.schemas.types import ModelAction, ModelCommand

    settings = _settings(config, bootstrap)
    model_id, _, version = model_ref.partition("@")
    command = ModelCommand(
        command_id=uuid.uuid4().hex,
        action=ModelAction(action),
        model_id=model_id,
        model_version=version or None,
        params=params or {},
    )
    terminal = {"load": {"ready", "failed"}, "unload": {"unloaded", "evicted", "failed"}}.get(action)

    async def go() -> list[Any]:
        kwargs = client_kwargs(settings.kafka, client_suffix="cli")
        c = AltlasClient(kwargs, build_codec(settings), settings.topics)
        async with c, c.reader(settings.topics.model_status) as reader:
            await c.publish(command, settings.topics.model_commands, key=model_id)
            seen: list[Any] = []
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                for rec in await reader.read(0.5):
                    status = c.decode_status(rec.value)
                    if status.command_id == command.command_id:
                        seen.append(status)
                if terminal and seen and all(s.state.value in terminal for s in seen[-1:]):
                    break
            return seen

    with console.status(f"{action} {model_ref} ..."):
        seen = asyncio.run(go())
    if not seen:
        console.print(f"[red]no instance answered within {wait}s (is `altlas run` running?)[/red]")
        raise typer.Exit(1)
    table = Table("instance", "model", "version", "state", "memory MiB", "load ms", "message")
    for s in seen:
        table.add_row(
            s.instance_id,
            s.model_id,
            s.model_version,
            s.state.value,
            f"{s.memory_bytes / 2**20:.1f}",
            f"{s.load_ms:.0f}" if s.load_ms is not None else "",
            s.message,
        )
    out.print(table)


WaitOpt = Annotated[float, typer.Option(help="Seconds to wait for status events.")]


@models_app.command("load")
def models_load(
    model: str, config: ConfigOpt = None, bootstrap_servers: BootstrapOpt = None, wait: WaitOpt = 60.0
) -> None:
    """Ask running instances to load a model (a ModelCommand on the commands topic)."""
    _command("load", model, config, bootstrap_servers, wait)


@models_app.command("unload")
def models_unload(
    model: str, config: ConfigOpt = None, bootstrap_servers: BootstrapOpt = None, wait: WaitOpt = 10.0
) -> None:
    """Ask running instances to unload a model."""
    _command("unload", model, config, bootstrap_servers, wait)


@models_app.command("cancel")
def models_cancel(
    model: str,
    request_id: str,
    config: ConfigOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    wait: WaitOpt = 3.0,
) -> None:
    """End one request on a model wherever it runs; it is answered with what it had generated."""
    _command("cancel", model, config, bootstrap_servers, wait, params={"request_id": request_id})


@models_app.command("status")
def models_status(
    model: str, config: ConfigOpt = None, bootstrap_servers: BootstrapOpt = None, wait: WaitOpt = 3.0
) -> None:
    """Ask running instances for a model's state."""
    _command("status", model, config, bootstrap_servers, wait)


# ---------------------------------------------------------------- status
@app.command()
def status(
    config: ConfigOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    errors: Annotated[int, typer.Option(help="How many recent dead letters to show.")] = 10,
) -> None:
    """Consumer lag per partition, models per instance (with memory), and recent errors."""
    from altlas.orchestration.clients.lag_report import consumer_lag, model_states, recent_errors

    settings = _settings(config, bootstrap_servers)

    async def gather() -> tuple[Any, Any, Any]:
        return (
            await consumer_lag(settings),
            await model_states(settings),
            await recent_errors(settings, errors),
        )

    lags, models, recent = asyncio.run(gather())
    lag_table = Table("group", "topic", "partition", "committed", "end", "lag", title="consumer lag")
    for lag in lags:
        committed = "-" if lag.committed is None else str(lag.committed)
        lag_table.add_row(lag.group, lag.topic, str(lag.partition), committed, str(lag.end), str(lag.lag))
    out.print(lag_table)
    model_table = Table(
        "model", "version", "instance", "state", "memory MiB", "rss MiB", "cpu %", "at", title="models"
    )
    for s in models:
        res = s.resources
        model_table.add_row(
            s.model_id,
            s.model_version,
            s.instance_id,
            s.state.value,
            f"{s.memory_bytes / 2**20:.1f}",
            f"{res.process_rss_bytes / 2**20:.0f}" if res else "",
            f"{res.process_cpu_percent:.0f}" if res else "",
            s.timestamp.strftime("%H:%M:%S"),
        )
    out.print(model_table)
    error_table = Table("at", "code", "source", "request", "message", title="recent errors")
    for e in recent:
        error_table.add_row(e.when.strftime("%H:%M:%S"), e.code, e.source, e.request_id or "", e.message)
    out.print(error_table)


# ---------------------------------------------------------------- replay
@app.command()
def replay(
    *,
    topic: Annotated[str, typer.Option("--topic", help="Request topic to reprocess.")],
    start: Annotated[
        str, typer.Option("--from", help="Offset, earliest, an ISO time, or epoch millis + 'ms'.")
    ],
    model: Annotated[str, typer.Option("--model", help="Model id[@version] that answers every request.")],
    output_topic: Annotated[str, typer.Option("--output-topic", help="Where the results go (compacted).")],
    end: Annotated[
        str, typer.Option("--to", help="Stop before this offset/time (default: the end now).")
    ] = "latest",
    config: ConfigOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Reprocess a range of an old request topic with a chosen model version into a new topic."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from altlas.orchestration.clients.replay import parse_position
    from altlas.orchestration.clients.replay import replay as run_replay

    settings = _settings(config, bootstrap_servers, registry)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        job = bar.add_task(f"replaying {topic} with {model}", total=None)
        summary = asyncio.run(
            run_replay(
                settings,
                topic,
                parse_position(start),
                parse_position(end),
                model,
                output_topic,
                progress=lambda done, total: bar.update(job, completed=done, total=total),
            )
        )
    table = Table(
        "replay", "source", "model", "output", "records", "answered", "skipped", "outcomes", "seconds"
    )
    outcomes = ", ".join(f"{k}={v}" for k, v in sorted(summary.outcomes.items()))
    table.add_row(
        summary.replay_id,
        summary.source,
        summary.model,
        summary.output_topic,
        str(summary.records),
        str(summary.answered),
        str(summary.skipped),
        outcomes,
        f"{summary.elapsed_s:.1f}",
    )
    out.print(table)


# ---------------------------------------------------------------- misc
@app.command()
def demo(config: ConfigOpt = None) -> None:
    """Local broker + orchestrator + sample requests, results as a table, clean shutdown."""
    from altlas.orchestration.devtools.demo import run_demo

    sys.exit(asyncio.run(run_demo(_settings(config), console=out)))


@app.command()
def acls(
    principal: Annotated[str, typer.Option(help="altlas's Kafka principal.")] = "User:altlas",
    command_config: Annotated[
        str, typer.Option(help="Admin client properties file for kafka-acls.sh.")
    ] = "admin.properties",
    config: ConfigOpt = None,
    bootstrap_servers: BootstrapOpt = None,
) -> None:
    """Print the kafka-acls.sh commands that grant altlas exactly the ACLs its settings need."""
    from altlas.orchestration.app.acls import kafka_acls_commands, reply_prefixes

    settings = _settings(config, bootstrap_servers)
    for line in kafka_acls_commands(
        settings, principal, bootstrap=settings.kafka.bootstrap_servers, config=command_config
    ):
        print(line)
    for pattern in reply_prefixes(settings)[1]:
        console.print(
            f"[yellow]reply-topic pattern {pattern!r} names no prefix: grant Write per topic[/yellow]"
        )


@app.command("config")
def config_reference() -> None:
    """Print every setting with its environment variable, default and description."""
    from altlas.orchestration.app.settings_doc import settings_reference

    out.print(settings_reference())


@schemas_app.command("export")
def schemas_export(target: Path) -> None:
    """Write self-contained (bundled) .avsc files of every event to TARGET."""
    from altlas.schemas.catalog import SchemaCatalog

    catalog = SchemaCatalog()
    target.mkdir(parents=True, exist_ok=True)
    for name in catalog.names():
        (target / f"{name}.avsc").write_text(json.dumps(catalog.bundled(name), indent=2) + "\n")
        console.print(f"{name}: fingerprint {catalog.get(name).fingerprint_hex}")


@docs_app.command("asyncapi")
def docs_asyncapi(
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="Write here (e.g. docs/asyncapi.yaml) instead of stdout."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """The AsyncAPI 3.0 document of every topic, generated from the Avro schemas and topic settings."""
    from altlas.orchestration.clients.asyncapi import render_asyncapi

    text = render_asyncapi(_settings(config))
    if output is None:
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    console.print(f"wrote {output}")


# ---------------------------------------------------------------- gateway
@app.command()
def gateway(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; off loopback, gateway.api_keys must be set.")
    ] = "127.0.0.1",
    timeout: Annotated[float, typer.Option(help="Default seconds to wait for a result (then 504).")] = 60.0,
    config: ConfigOpt = None,
    bootstrap_servers: BootstrapOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """HTTP gateway for the old REST endpoints: publishes request events and waits for their results."""
    try:
        import uvicorn

        from altlas.orchestration.clients.gateway import create_app
    except ImportError as exc:
        console.print(f"[red]the gateway needs its extra: pip install 'altlas[gateway]' ({exc})[/red]")
        raise typer.Exit(1) from exc
    from altlas.orchestration.clients.gateway_guard import ExposureError, check_exposure

    settings = _settings(config, bootstrap_servers, registry)
    try:
        check_exposure(host, settings.gateway)
    except ExposureError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    uvicorn.run(create_app(settings, timeout_s=timeout), host=host, port=port, log_level="warning")


def main() -> None:
    """Console-script entry point."""
    app()
