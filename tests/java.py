"""Java libraries from Maven Central for cross-language tests, cached under ``~/.cache/altlas/java``.

The recipe of ``altlas.orchestration.kafka_dist``: Maven Central carries every
Java library with its dependency tree, so a throwaway POM and ``mvn
dependency:copy-dependencies`` give a runnable classpath without a build. A
``.complete`` marker and a file lock make the download happen once, even when
several pytest processes start together. It lives in ``tests/`` because only
tests run Java; the installed packages never need a JVM.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from altlas.orchestration.settings import cache_dir

AVRO_VERSION = "1.12.2"
#: The slf4j-api that avro 1.12.2 depends on; the no-op binding keeps stderr free of its warnings.
SLF4J_VERSION = "2.0.18"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>altlas.local</groupId><artifactId>{name}-classpath</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""


@dataclass(frozen=True)
class Artifact:
    """Maven coordinates of one library."""

    group: str
    artifact: str
    version: str

    def pom_entry(self) -> str:
        """The ``<dependency>`` element for the throwaway POM."""
        return (
            f"    <dependency><groupId>{self.group}</groupId><artifactId>{self.artifact}</artifactId>"
            f"<version>{self.version}</version></dependency>"
        )


class MavenClasspath:
    """Some artifacts and their runtime dependencies as jars in one cached folder."""

    def __init__(self, name: str, artifacts: tuple[Artifact, ...], cache: Path | None = None) -> None:
        self.name = name
        self.artifacts = artifacts
        self.root = (cache or cache_dir()) / "java" / name
        self.libs = self.root / "libs"

    @property
    def ready(self) -> bool:
        """Whether the jars were fetched completely."""
        return (self.root / ".complete").exists()

    @property
    def classpath(self) -> str:
        """Java ``-cp`` value (a wildcard over the jars)."""
        return str(self.libs / "*")

    def ensure(self) -> MavenClasspath:
        """Fetch the jars once (safe across concurrent processes); raises when mvn fails."""
        if self.ready:
            return self
        if shutil.which("mvn") is None:
            raise RuntimeError(f"Maven (mvn) is needed to fetch the {self.name} jars")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.ready:
                return self
            with tempfile.TemporaryDirectory() as tmp:
                pom = Path(tmp) / "pom.xml"
                entries = "\n".join(a.pom_entry() for a in self.artifacts)
                pom.write_text(_POM.format(name=self.name, dependencies=entries))
                staging = self.root / "libs.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                cmd = [
                    "mvn",
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    output = proc.stdout[-3000:] + proc.stderr[-2000:]
                    raise RuntimeError(f"mvn failed fetching the {self.name} jars:\n{output}")
                shutil.rmtree(self.libs, ignore_errors=True)
                staging.rename(self.libs)
            (self.root / ".complete").write_text(" ".join(a.version for a in self.artifacts))
        return self


def avro_classpath(cache: Path | None = None) -> MavenClasspath:
    """The official Java Avro library (with jackson, commons-compress, slf4j) as a classpath."""
    return MavenClasspath(
        f"avro-{AVRO_VERSION}",
        (
            Artifact("org.apache.avro", "avro", AVRO_VERSION),
            Artifact("org.slf4j", "slf4j-nop", SLF4J_VERSION),
        ),
        cache,
    )
