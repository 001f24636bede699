"""Apache Kafka jars from Maven Central, cached under ``~/.cache/altlas/kafka``.

Kafka's binary tarball comes from a download site this project cannot assume;
Maven Central always carries ``org.apache.kafka:kafka_<scala>`` with its whole
dependency tree, so a throwaway POM and ``mvn dependency:copy-dependencies``
give a runnable classpath. Kafka 3.x logs through log4j 1 (reload4j), 4.x
through log4j2; the binding is chosen by major version.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>altlas.local</groupId><artifactId>kafka-classpath</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""

_LOG4J1 = [("org.slf4j", "slf4j-reload4j", "1.7.36"), ("ch.qos.reload4j", "reload4j", "1.2.25")]
_LOG4J2 = [("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.3")]


def _dependency(group: str, artifact: str, version: str) -> str:
    return (
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>"
    )


def uses_log4j2(version: str) -> bool:
    """Kafka 4.0 moved from log4j 1 to log4j2."""
    return int(version.split(".")[0]) >= 4


class KafkaDistribution:
    """One Kafka version's classpath on disk."""

    def __init__(self, version: str, scala: str = "2.13", cache: Path | None = None) -> None:
        from altlas.orchestration.settings import cache_dir

        self.version = version
        self.scala = scala
        self.root = (cache or cache_dir()) / "kafka" / f"{scala}-{version}"
        self.libs = self.root / "libs"

    @property
    def ready(self) -> bool:
        """Whether the jars were fetched completely."""
        return (self.root / ".complete").exists()

    @property
    def classpath(self) -> str:
        """Java ``-cp`` value."""
        return str(self.libs / "*")

    def ensure(self, *, quiet: bool = True) -> KafkaDistribution:
        """Fetch the jars once (safe across concurrent processes)."""
        if self.ready:
            return self
        if shutil.which("mvn") is None:
            raise RuntimeError(
                "Maven (mvn) is needed to fetch the Kafka jars; install it or set KAFKA_BOOTSTRAP_SERVERS"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.ready:
                return self
            log.warning("fetching Kafka %s jars from Maven Central into %s", self.version, self.libs)
            with tempfile.TemporaryDirectory() as tmp:
                pom = Path(tmp) / "pom.xml"
                deps = [("org.apache.kafka", f"kafka_{self.scala}", self.version)]
                deps += _LOG4J2 if uses_log4j2(self.version) else _LOG4J1
                pom.write_text(_POM.format(dependencies="\n".join(_dependency(*d) for d in deps)))
                staging = self.root / "libs.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                cmd = [
                    "mvn",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                ]
                if quiet:
                    cmd.insert(1, "-q")
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    output = proc.stdout[-3000:] + proc.stderr[-2000:]
                    raise RuntimeError(f"mvn failed fetching Kafka {self.version}:\n{output}")
                shutil.rmtree(self.libs, ignore_errors=True)
                staging.rename(self.libs)
            (self.root / ".complete").write_text(self.version)
        return self
