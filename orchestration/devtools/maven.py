"""Java classpaths from Maven Central, without a build.

Maven Central carries every Java library with its whole dependency tree, so a
throwaway POM and ``mvn dependency:copy-dependencies`` give a runnable classpath
(the Kafka broker's here, the official Avro library's in the tests).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>altlas.local</groupId><artifactId>classpath</artifactId><version>1</version>
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


def copy_dependencies(artifacts: Sequence[Artifact], libs: Path, *, what: str, quiet: bool = True) -> None:
    """Put ``artifacts`` and their runtime dependencies as jars in ``libs`` (replacing it).

    The jars land in a staging folder first, so a failed fetch leaves no half
    classpath behind; a failure raises RuntimeError with mvn's output.
    """
    with tempfile.TemporaryDirectory() as tmp:
        pom = Path(tmp) / "pom.xml"
        pom.write_text(_POM.format(dependencies="\n".join(a.pom_entry() for a in artifacts)))
        staging = libs.with_name(libs.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = ["mvn", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
        if quiet:
            cmd.insert(1, "-q")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            output = proc.stdout[-3000:] + proc.stderr[-2000:]
            raise RuntimeError(f"mvn failed fetching {what}:\n{output}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
