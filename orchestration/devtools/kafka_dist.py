"""Apache Kafka jars from Maven Central, cached under ``~/.cache/altlas/kafka``.

Kafka's binary tarball comes from a download site this project cannot assume;
Maven Central always carries ``org.apache.kafka:kafka_<scala>`` with its whole
dependency tree (see ``maven``). Kafka 3.x logs through log4j 1 (reload4j), 4.x
through log4j2; the binding is chosen by major version.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from altlas.orchestration.devtools.maven import Artifact, copy_dependencies
from altlas.orchestration.devtools.once import build_once, is_complete

log = logging.getLogger(__name__)

_LOG4J1 = [
    Artifact("org.slf4j", "slf4j-reload4j", "1.7.36"),
    Artifact("ch.qos.reload4j", "reload4j", "1.2.25"),
]
_LOG4J2 = [Artifact("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.3")]


def uses_log4j2(version: str) -> bool:
    """Kafka 4.0 moved from log4j 1 to log4j2."""
    return int(version.split(".")[0]) >= 4


class KafkaDistribution:
    """One Kafka version's classpath on disk."""

    def __init__(self, version: str, scala: str = "2.13", cache: Path | None = None) -> None:
        from altlas.orchestration.app.settings import cache_dir

        self.version = version
        self.scala = scala
        self.root = (cache or cache_dir()) / "kafka" / f"{scala}-{version}"
        self.libs = self.root / "libs"

    @property
    def ready(self) -> bool:
        """Whether the jars were fetched completely."""
        return is_complete(self.root)

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

        def fetch() -> None:
            log.warning("fetching Kafka %s jars from Maven Central into %s", self.version, self.libs)
            artifacts = [Artifact("org.apache.kafka", f"kafka_{self.scala}", self.version)]
            artifacts += _LOG4J2 if uses_log4j2(self.version) else _LOG4J1
            copy_dependencies(artifacts, self.libs, what=f"Kafka {self.version}", quiet=quiet)

        build_once(self.root, fetch, stamp=self.version)
        return self
