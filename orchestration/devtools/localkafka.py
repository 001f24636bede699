"""A single-node KRaft Kafka broker on loopback, for tests, the demo and `altlas broker up`.

The broker is a real ``kafka.Kafka`` JVM started from the cached Maven jars on
free ports, formatted with ``kafka.tools.StorageTool``. It is ready when it
answers a metadata request. The JVM runs in its own session so that it can
outlive the CLI command that started it (``broker up``) and be stopped by
another (``broker down``), which finds it through a small state file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from altlas.orchestration.devtools.kafka_dist import KafkaDistribution, uses_log4j2

log = logging.getLogger(__name__)

_LOG4J1_CONFIG = """log4j.rootLogger={level}, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
"""

_LOG4J2_CONFIG = """Configuration:
  Appenders:
    Console:
      name: STDERR
      target: SYSTEM_ERR
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: {level}
      AppenderRef:
        - ref: STDERR
"""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_cluster_id() -> str:
    """A random Kafka cluster id (base64url of 16 bytes, as ``random-uuid`` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass(frozen=True)
class SaslUsers:
    """Users of a SASL_PLAINTEXT listener: PLAIN ones in the JAAS config, SCRAM ones added at format."""

    plain: dict[str, str] = field(default_factory=dict)
    scram_sha_256: dict[str, str] = field(default_factory=dict)
    admin: tuple[str, str] = ("admin", "admin-secret")

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka arguments for the admin user (readiness checks)."""
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": self.admin[0],
            "sasl_plain_password": self.admin[1],
        }

    def broker_config(self) -> dict[str, str]:
        """server.properties entries of the SASL_PLAINTEXT listener (PLAIN users in its JAAS line)."""
        users = {self.admin[0]: self.admin[1], **self.plain}
        plain = " ".join(f'user_{name}="{password}"' for name, password in users.items())
        return {
            "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{self.admin[0]}" password="{self.admin[1]}" {plain};'
            ),
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
        }

    def format_args(self) -> list[str]:
        """StorageTool arguments that create the SCRAM users (they live in the metadata log)."""
        args = []
        for name, password in self.scram_sha_256.items():
            args += ["--add-scram", f"SCRAM-SHA-256=[name={name},password={password}]"]
        return args


@dataclass
class BrokerState:
    """What another process needs to find and stop a running broker."""

    pid: int
    port: int
    controller_port: int
    data_dir: str
    version: str

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"


class LocalBroker:
    """Starts, waits for and stops one local KRaft broker."""

    def __init__(
        self,
        dist: KafkaDistribution,
        *,
        data_dir: Path | None = None,
        heap: str = "256m",
        jvm_opts: str = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1",
        log_level: str = "WARN",
        extra_config: dict[str, str] | None = None,
        sasl: SaslUsers | None = None,
    ) -> None:
        self.dist = dist
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="altlas-kafka-"))
        self.heap = heap
        self.jvm_opts = jvm_opts
        self.log_level = log_level
        self.extra_config = extra_config or {}
        self.sasl = sasl
        self.state: BrokerState | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int] | None = None

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers of the running broker."""
        if self.state is None:
            raise RuntimeError("broker not started")
        return self.state.bootstrap

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = Path(java_home, "bin", "java") if java_home else shutil.which("java")
        if not java:
            raise RuntimeError("java not found: install a JDK 17+ or set JAVA_HOME")
        return str(java)

    @property
    def _protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.sasl is not None else "PLAINTEXT"

    @property
    def _admin_kwargs(self) -> dict[str, Any]:
        return self.sasl.client_kwargs() if self.sasl is not None else {}

    def _write_config(self, port: int, cport: int) -> tuple[Path, list[str]]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"{self._protocol}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"{self._protocol}://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": self._protocol,
            **(self.sasl.broker_config() if self.sasl is not None else {}),
            "log.dirs": str(logs.resolve()),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            **self.extra_config,
        }
        server = self.data_dir / "server.properties"
        server.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        if uses_log4j2(self.dist.version):
            cfg = self.data_dir / "log4j2.yaml"
            cfg.write_text(_LOG4J2_CONFIG.format(level=self.log_level))
            log_flag = f"-Dlog4j2.configurationFile={cfg}"
        else:
            cfg = self.data_dir / "log4j.properties"
            cfg.write_text(_LOG4J1_CONFIG.format(level=self.log_level))
            log_flag = f"-Dlog4j.configuration=file:{cfg}"
        jvm = [f"-Xmx{self.heap}", "-Xms32m", *self.jvm_opts.split(), log_flag]
        return server, jvm

    def start(self, timeout_s: float = 60.0) -> BrokerState:
        """Format storage, launch the JVM and block until it answers metadata."""
        self.prepare()
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except Exception:
            self.stop()
            raise
        assert self.state is not None
        return self.state

    def prepare(self, ports: tuple[int, int] | None = None, cluster_id: str | None = None) -> None:
        """Choose the ports, write the config and format the storage; no JVM yet.

        A cluster node cannot become ready alone (its controller needs a quorum), so a
        cluster prepares and launches every node before it waits for any.
        """
        self.dist.ensure()
        if ports is None:
            port, cport = free_port(), free_port()
            while cport == port:
                cport = free_port()
            ports = (port, cport)
        self._ports = ports
        server, jvm = self._write_config(*ports)
        fmt = subprocess.run(
            [
                self._java(),
                *jvm,
                "-cp",
                self.dist.classpath,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id or new_cluster_id()}",
                "-c",
                str(server),
                *(self.sasl.format_args() if self.sasl is not None else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka storage format failed: {fmt.stderr[-2000:] or fmt.stdout[-2000:]}")

    def launch(self) -> BrokerState:
        """Start the JVM on the prepared config and data (again after a stop or a kill)."""
        if self._ports is None:
            raise RuntimeError("broker not prepared")
        server, jvm = self._write_config(*self._ports)
        log_file = open(self.data_dir / "broker.log", "ab")  # noqa: SIM115 (owned by the child)
        self._proc = subprocess.Popen(
            [self._java(), *jvm, "-cp", self.dist.classpath, "kafka.Kafka", str(server)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log_file.close()
        port, cport = self._ports
        self.state = BrokerState(self._proc.pid, port, cport, str(self.data_dir), self.dist.version)
        return self.state

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the launched JVM answers metadata (fail early if it exits)."""
        if self.state is None:
            raise RuntimeError("broker not started")
        wait_until_ready(
            self.state.bootstrap, timeout_s, process=self._proc, client_kwargs=self._admin_kwargs
        )

    def kill(self, sig: signal.Signals = signal.SIGKILL, timeout_s: float = 30.0) -> None:
        """Send ``sig`` to the JVM and wait for it to exit, keeping the data (crash injection)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        """Whether the JVM this object launched is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, remove_data: bool = True, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; optionally delete the data dir."""
        if self.state is not None:
            stop_process(self.state.pid, timeout_s)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
        if remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, timeout_s: float = 60.0) -> BrokerState:
        """Stop (keeping data) and start again on the same ports and data."""
        self.stop(remove_data=False)
        self.launch()
        self.wait_ready(timeout_s)
        assert self.state is not None
        return self.state

    def save_state(self, path: Path) -> None:
        """Write the state file `broker down` reads."""
        assert self.state is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self.state)))


def stop_process(pid: int, timeout_s: float = 15.0) -> None:
    """Terminate a process (group) politely, then forcefully."""
    stop_processes([pid], timeout_s)


def stop_processes(pids: list[int], timeout_s: float = 15.0) -> None:
    """SIGTERM every process group at once, SIGKILL what is left after ``timeout_s``, wait for the end.

    At once, because the nodes of a cluster stopped one by one lose their controller quorum, and
    the last ones then wait out their controlled shutdown.
    """
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass  # not our child: fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until_ready(
    bootstrap: str,
    timeout_s: float,
    process: subprocess.Popen[bytes] | None = None,
    client_kwargs: dict[str, Any] | None = None,
) -> None:
    """Block until the broker answers a metadata request (or fail with its log tail)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"kafka exited with code {process.returncode} during start")
        try:
            host, _, port = bootstrap.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=1):
                pass  # listening; now ask for metadata
            _run_coroutine(_metadata(bootstrap, client_kwargs))
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.25)
    raise TimeoutError(f"kafka at {bootstrap} not ready after {timeout_s}s: {last}")


def _run_coroutine(coro: Any) -> None:
    """asyncio.run, also from code that already runs inside an event loop (on a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _metadata(bootstrap: str, client_kwargs: dict[str, Any] | None = None) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000, **(client_kwargs or {}))
    try:
        await asyncio.wait_for(admin.start(), 3)
        await asyncio.wait_for(admin.describe_cluster(), 3)
    finally:
        await admin.close()
