"""Java libraries from Maven Central for cross-language tests, cached under ``~/.cache/altlas/java``.

The Kafka broker's recipe (``altlas.orchestration.devtools.maven`` and ``once``): a
throwaway POM and ``mvn dependency:copy-dependencies`` give a runnable
classpath, fetched once even when several pytest processes start together. It
lives in ``tests/`` because only tests run Java libraries other than Kafka.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from altlas.orchestration.app.settings import cache_dir
from altlas.orchestration.devtools.maven import Artifact, copy_dependencies
from altlas.orchestration.devtools.once import build_once, is_complete

AVRO_VERSION = "1.12.2"
#: The slf4j-api that avro 1.12.2 depends on; the no-op binding keeps stderr free of its warnings.
SLF4J_VERSION = "2.0.18"


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
        return is_complete(self.root)

    @property
    def classpath(self) -> str:
        """Java ``-cp`` value (a wildcard over the jars)."""
        return str(self.libs / "*")

    def ensure(self) -> MavenClasspath:
        """Fetch the jars once (safe across concurrent processes); raises when mvn fails."""
        if shutil.which("mvn") is None and not self.ready:
            raise RuntimeError(f"Maven (mvn) is needed to fetch the {self.name} jars")
        build_once(
            self.root,
            lambda: copy_dependencies(self.artifacts, self.libs, what=f"the {self.name} jars"),
            stamp=" ".join(a.version for a in self.artifacts),
        )
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
