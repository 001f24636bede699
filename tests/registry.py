"""A real Confluent-compatible schema registry for end-to-end tests: Apicurio Registry.

Confluent's own registry is not on Maven Central under a usable licence, and
Docker is not assumed; Apicurio Registry ships as a self-contained Quarkus
tarball on Maven Central, runs on the JDK the local Kafka broker already
needs, keeps everything in memory by default and serves the Confluent REST API
under ``/apis/ccompat/v7``. So the same ``mvn`` that fetches the Kafka jars
fetches it once into ``~/.cache/altlas/apicurio/<version>``, and a session
starts one process on a free port. ``SCHEMA_REGISTRY_URL`` points the tests at
an existing registry (Confluent, Karapace, Redpanda...) instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from altlas.orchestration.app.settings import cache_dir
from altlas.orchestration.devtools.localkafka import free_port
from altlas.orchestration.devtools.once import build_once, is_complete

APICURIO_VERSION = os.environ.get("ALTLAS_TEST_APICURIO_VERSION", "3.0.9")
CCOMPAT_PATH = "/apis/ccompat/v7"
READY_TIMEOUT_S = 90.0


class ApicurioDistribution:
    """Apicurio Registry's runnable tarball, unpacked once per version and machine."""

    def __init__(self, version: str = APICURIO_VERSION, cache: Path | None = None) -> None:
        self.version = version
        self.root = (cache or cache_dir()) / "apicurio" / version
        self.app = self.root / "app"

    @property
    def ready(self) -> bool:
        """Whether the tarball was unpacked completely (a half-done unpack has no marker)."""
        return is_complete(self.root)

    @property
    def runner_jar(self) -> Path:
        """The Quarkus runner jar (its manifest finds ``lib/`` next to it)."""
        jars = [
            p
            for p in self.app.rglob(f"apicurio-registry-app-{self.version}-runner.jar")
            if "PaxHeaders" not in p.parts and not p.name.startswith("._")
        ]
        if not jars:
            raise RuntimeError(f"no Apicurio runner jar under {self.app}")
        return jars[0]

    def ensure(self) -> ApicurioDistribution:
        """Fetch and unpack once; a file lock makes concurrent sessions wait for one fetch."""
        build_once(self.root, self._unpack, stamp=self.version)
        return self

    def _unpack(self) -> None:
        staging = self.root / "app.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:  # a folder without a pom.xml
            cmd = [
                "mvn",
                "-q",
                "-B",
                "dependency:unpack",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{self.version}:tar.gz:all",
                f"-DoutputDirectory={staging}",
            ]
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            output = proc.stdout[-3000:] + proc.stderr[-2000:]
            raise RuntimeError(f"mvn failed fetching Apicurio Registry {self.version}:\n{output}")
        shutil.rmtree(self.app, ignore_errors=True)
        staging.rename(self.app)
        self.runner_jar  # noqa: B018 - fail now, not at every start, if the layout changed


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class ApicurioRegistry:
    """One in-memory Apicurio process on 127.0.0.1."""

    def __init__(self, dist: ApicurioDistribution, workdir: Path, heap: str = "256m") -> None:
        self.dist = dist
        self.workdir = workdir
        self.heap = heap
        self.port = 0
        self.log_path = workdir / "apicurio.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the process log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start and wait until ``GET /subjects`` answers 200; raises with the log tail otherwise."""
        self.port = free_port()
        cmd = [
            "java",
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={self.port}",
            "-jar",
            str(self.dist.runner_jar),
        ]
        with open(self.log_path, "wb") as log:
            # cwd: the per-session folder, so nothing the app writes lands in the shared cache.
            self._proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Apicurio exited with {self._proc.returncode} before it was ready:\n{self.log_tail()}"
                )
            if _status(f"{self.url}/subjects") == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"Apicurio not ready on port {self.port} after {timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM (Quarkus shuts down cleanly on it); SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a Confluent-compatible schema registry for the whole session."""
    external = os.environ.get("SCHEMA_REGISTRY_URL")
    if external:
        yield external.rstrip("/")
        return
    dist = ApicurioDistribution()
    if shutil.which("java") is None:
        pytest.skip("java is needed to run Apicurio Registry (or set SCHEMA_REGISTRY_URL)")
    if not dist.ready and shutil.which("mvn") is None:
        pytest.skip("mvn is needed to fetch Apicurio Registry (or set SCHEMA_REGISTRY_URL)")
    registry = ApicurioRegistry(dist.ensure(), tmp_path_factory.mktemp("apicurio"))
    try:
        registry.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield registry.url
    finally:
        registry.stop()
