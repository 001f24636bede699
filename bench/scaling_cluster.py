"""``bench/scaling.py --cluster``: 1, 2 and 3 instances on a local 3-broker cluster.

On a 2-core machine more instances cannot add CPU, so the question is not
whether throughput grows but whether it holds: total requests/s and requests
per CPU-second of altlas with 1, 2 and 3 instances (ratios against the
1-instance run of the same invocation), how evenly the answers spread over the
instances and the partitions, and consumer lag over time. Then a scale-out under
a steady stream (1 -> 2 -> 3 instances) measures what a rebalance costs: the
longest stretch without any answer after each join, against the longest in the
steady stretch before the first one (broker LogAppendTime of the answers).
Ends with one ``RESULT`` line; writes its section of docs/performance.md and
``docs/scaling-cluster.png`` (lag over time).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console

from bench.common import ROOT, collect, create_topics, orchestrator_config, preload, start_orchestrator
from bench.scaling import _group_stable, _registry, _requests

console = Console(stderr=True)
PARTITIONS = 6
SAMPLE_S = 0.25
MARK = "scaling-cluster"


@dataclass
class Run:
    """One backlog drained by ``instances`` processes."""

    instances: int
    rps: float = 0.0
    cpu_s: float = 0.0
    by_instance: Counter[str] = field(default_factory=Counter)
    by_partition: Counter[int] = field(default_factory=Counter)
    lag: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, records)

    @property
    def per_cpu_s(self) -> float:
        """Requests answered per CPU-second of the altlas processes."""
        return sum(self.by_partition.values()) / self.cpu_s if self.cpu_s else 0.0

    @staticmethod
    def spread(counts: Counter[str] | Counter[int]) -> float:
        """Largest share over smallest share (1.0 = perfectly even)."""
        return max(counts.values()) / max(1, min(counts.values())) if counts else float("nan")


class LagProbe:
    """Samples the group's lag (end offsets minus committed offsets) every ``SAMPLE_S``."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.samples: list[tuple[float, int]] = []  # (wall clock, records behind)
        self._stop = asyncio.Event()

    async def run(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await admin.start()
        await reader.start()
        tps = [TopicPartition(self.topic, p) for p in range(PARTITIONS)]
        try:
            while not self._stop.is_set():
                try:
                    ends = await reader.end_offsets(tps)
                    committed = await admin.list_consumer_group_offsets(self.group)
                    done = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
                    self.samples.append((time.time(), sum(ends[tp] - done.get(tp, 0) for tp in tps)))
                except Exception as exc:  # a group still forming; a sample missed is no harm
                    console.print(f"lag sample skipped: {exc}")
                await asyncio.sleep(SAMPLE_S)
        finally:
            await reader.stop()
            await admin.close()

    def stop(self) -> None:
        self._stop.set()

    def since(self, origin: float) -> list[tuple[float, int]]:
        """The samples, in seconds since ``origin`` (a wall-clock time)."""
        return [(t - origin, lag) for t, lag in self.samples]


def _fleet(bootstrap: str, tag: str, registry: Path, workdir: Path, k: int) -> subprocess.Popen[bytes]:
    group = f"cscale-{tag}"
    config = orchestrator_config(
        "vision", bootstrap, f"cscale.{tag}.in", f"cscale.{tag}.out", registry,
        group=group,
        create=False,
        instance_id=f"{group}-{k}",
        cache={"enabled": False},
        metrics={"port": None},
        batching={"max_batch": 64, "fetch_max_records": 512, "max_wait_ms": 0},
    )  # fmt: skip
    return start_orchestrator(config, workdir / f"{group}-{k}.yaml")


async def _topics(bootstrap: str) -> str:
    tag = uuid.uuid4().hex[:6]
    names = {f"cscale.{tag}.in": PARTITIONS, f"cscale.{tag}.out": PARTITIONS}
    extra = {f"cscale.{tag}.in.{s}": 1 for s in ("status", "commands", "dlq")}
    await create_topics(
        bootstrap, {**names, **extra}, log_append_time={f"cscale.{tag}.out"}, replication_factor=None
    )
    return tag


def _cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = psutil.Process(proc.pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)


async def backlog(bootstrap: str, n: int, instances: int, registry: Path, workdir: Path) -> Run:
    """``n`` requests produced at once once ``instances`` processes own their partitions."""
    tag = await _topics(bootstrap)
    procs = [_fleet(bootstrap, tag, registry, workdir, k) for k in range(instances)]
    run = Run(instances)
    try:
        await _group_stable(bootstrap, f"cscale-{tag}.vision", instances, 120)
        probe = LagProbe(bootstrap, f"cscale.{tag}.in", f"cscale-{tag}.vision")
        sampling = asyncio.create_task(probe.run())
        cpu0 = _cpu(procs)
        await preload(bootstrap, f"cscale.{tag}.in", _requests(n))

        def key_of(rec: object) -> str:
            run.by_instance[dict(rec.headers)["altlas.instance"].decode()] += 1  # type: ignore[attr-defined]
            run.by_partition[rec.partition] += 1  # type: ignore[attr-defined]
            return rec.key.decode()  # type: ignore[attr-defined,no-any-return]

        got = await collect(bootstrap, f"cscale.{tag}.out", n, 600, key_of=key_of)
        run.cpu_s = _cpu(procs) - cpu0
        await asyncio.sleep(2 * SAMPLE_S)  # the last commits into the lag series
        probe.stop()
        await sampling
        run.lag, run.rps = probe.since(probe.samples[0][0] if probe.samples else 0.0), got.rps
    finally:
        _stop(procs)
    assert got.unique == n, f"lost {n - got.unique}"
    return run


@dataclass
class ScaleOut:
    """A steady stream served by 1, then 2, then 3 instances."""

    rate: float
    joins: list[float] = field(default_factory=list)  # process starts, seconds since the stream began
    stable: list[float] = field(default_factory=list)  # the group stable with the new member
    lag: list[tuple[float, int]] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)  # append times, seconds since the stream began
    lost: int = 0

    def answer(self, at: float, key: str) -> str:
        """Note an answer appended ``at`` seconds into the stream; returns its key (``collect``'s key_of)."""
        self.answers.append(at)
        return key

    def stable_at(self, origin: float) -> Callable[[asyncio.Task[None]], None]:
        """A done-callback noting when the group became stable with a new member."""

        def note(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is None:
                self.stable.append(time.time() - origin)

        return note

    def peak_lag(self, start: float, end: float) -> int:
        """Most records behind within [start, end)."""
        return max((lag for t, lag in self.lag if start <= t < end), default=0)

    def longest_gap(self, start: float, end: float) -> float:
        """Longest stretch without an answer within [start, end)."""
        times = [t for t in self.answers if start <= t < end]
        return max((b - a for a, b in itertools.pairwise(times)), default=end - start)


async def scale_out(
    bootstrap: str, rate: float, registry: Path, workdir: Path, seconds: float = 42.0
) -> ScaleOut:
    """Stream at ``rate`` for ``seconds``; a second instance joins after a third of it, a third after two."""
    tag = await _topics(bootstrap)
    topic_in, group = f"cscale.{tag}.in", f"cscale-{tag}.vision"
    procs = [_fleet(bootstrap, tag, registry, workdir, 0)]
    out = ScaleOut(rate)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        await _group_stable(bootstrap, group, 1, 120)
        probe = LagProbe(bootstrap, topic_in, group)
        sampling = asyncio.create_task(probe.run())
        await producer.start()
        requests = _requests(int(rate * seconds))
        t0, wall0, tick = time.monotonic(), time.time(), 0.05
        per_tick = max(1, round(rate * tick))
        futures = []
        for i in range(0, len(requests), per_tick):
            elapsed = i / rate
            await asyncio.sleep(max(0.0, t0 + elapsed - time.monotonic()))
            if len(out.joins) < 2 and elapsed >= seconds * (len(out.joins) + 1) / 3:
                out.joins.append(time.time() - wall0)
                procs.append(_fleet(bootstrap, tag, registry, workdir, len(procs)))
                watch = asyncio.create_task(_group_stable(bootstrap, group, len(procs), 60))
                watch.add_done_callback(out.stable_at(wall0))
            futures += [await producer.send(topic_in, v, key=k) for k, v in requests[i : i + per_tick]]
        await asyncio.gather(*futures)
        got = await collect(
            bootstrap,
            f"cscale.{tag}.out",
            len(requests),
            300,
            key_of=lambda r: out.answer(r.timestamp / 1000 - wall0, r.key.decode()),
        )
        out.answers.sort()
        out.lost = len(requests) - got.unique
        await asyncio.sleep(2 * SAMPLE_S)
        probe.stop()
        await sampling
        out.lag = probe.since(wall0)
    finally:
        await producer.stop()
        _stop(procs)
    return out


def _chart(runs: dict[int, Run], scaled: ScaleOut, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        console.print("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for k, run in runs.items():
        left.plot([t for t, _ in run.lag], [lag for _, lag in run.lag], label=f"{k} instance(s)")
    left.set(title="backlog drained by 1, 2, 3 instances", xlabel="s", ylabel="consumer lag (records)")
    left.legend()
    right.plot([t for t, _ in scaled.lag], [lag for _, lag in scaled.lag], color="#d62728")
    for n, join in enumerate(scaled.joins, start=2):
        right.axvline(join, color="#7f7f7f", linestyle="--")
        right.text(join, right.get_ylim()[1] * 0.9, f" instance {n} starts", fontsize=8)
    for stable in scaled.stable:
        right.axvline(stable, color="#2ca02c", linestyle=":")
    right.set(
        title=f"scale-out under {scaled.rate:.0f} req/s (1 -> 2 -> 3; dotted: group stable)",
        xlabel="s since the stream began",
        ylabel="consumer lag (records)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def _markdown(n: int, runs: dict[int, Run], scaled: ScaleOut, result: str, chart: bool, took_s: float) -> str:
    base = runs[1]
    lines = [
        f"<!-- {MARK}: begin (written by `python -m bench.scaling --cluster`; a new run rewrites it) -->",
        "## Scaling on a 3-broker cluster",
        "",
        f"Command: `python -m bench.scaling --cluster` ({datetime.now(UTC):%Y-%m-%d %H:%M UTC}, "
        f"{os.cpu_count()} cores shared by the three brokers, the instances and the bench; "
        f"{took_s / 60:.1f} min). "
        f"A local 3-node KRaft cluster (replication 3, min ISR 2), {PARTITIONS} request partitions, "
        f"the `busy` model (a few ms of real compute per request), at-least-once; each row drains a "
        f"backlog of {n:,} requests produced once every instance owns its partitions. requests/s from "
        "the broker's append times of the first and last answer; CPU is user+system of the altlas processes "
        "over the drain; spread is the largest share over the smallest (1.00 = even). Other work shares "
        "the machine and the figures spread from run to run, so compare the rows of one run.",
        "",
        "| instances | requests/s | vs 1 instance | requests/s per instance | requests per altlas CPU-s | "
        "vs 1 instance | answers per instance | spread over instances | spread over partitions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, run in runs.items():
        shares = ", ".join(str(c) for _, c in sorted(run.by_instance.items()))
        lines.append(
            f"| {k} | {run.rps:,.0f} | {run.rps / base.rps:.2f}x | {run.rps / k:,.0f} | "
            f"{run.per_cpu_s:,.0f} | "
            f"{run.per_cpu_s / base.per_cpu_s:.2f}x | {shares} | {Run.spread(run.by_instance):.2f} | "
            f"{Run.spread(run.by_partition):.2f} |"
        )
    steady = scaled.longest_gap(1.0, scaled.joins[0])
    gaps = [scaled.longest_gap(j, j + 14.0) for j in scaled.joins]
    peaks = [scaled.peak_lag(j, j + 14.0) for j in scaled.joins]
    stable = ", ".join(f"{t - j:.1f} s" for t, j in zip(scaled.stable, scaled.joins, strict=False))
    lines += [
        "",
        "The machine has 2 cores, so a second or third instance cannot add CPU: requests/s per instance "
        "is the total divided among them. What should hold, and is measured, is the total (against one "
        "instance), the CPU each request costs, and an even spread of the work.",
        "",
        f"**Rebalance cost.** One instance serves a stream of {scaled.rate:.0f} requests/s (60 % of what it "
        f"drained above). A second process starts {scaled.joins[0]:.0f} s in and a third "
        f"{scaled.joins[1]:.0f} s in; the group was stable with each new member {stable} after its "
        "start. The longest stretch "
        f"without any answer was {steady:.2f} s while steady, then {gaps[0]:.2f} s and {gaps[1]:.2f} s "
        "within 14 s of each start. That is the rebalance itself: every member gives its partitions back, "
        "the group re-forms, and each resumes from the committed offsets. Consumer lag peaked at "
        f"{peaks[0]:,} and {peaks[1]:,} records within 14 s of each start, against "
        f"{scaled.peak_lag(scaled.joins[0] / 2, scaled.joins[0]):,} in the steady stretch before: besides "
        "the pause, a starting process (imports, model load: seconds of CPU) takes CPU from the running "
        f"instance on a 2-core machine. Lost: {scaled.lost}.",
        "",
    ]
    if chart:
        lines += ["![consumer lag over time](scaling-cluster.png)", ""]
    lines += ["```", result, "```", f"<!-- {MARK}: end -->", ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace this bench's section of ``path`` (or append it), leaving the rest as it is."""
    text = path.read_text() if path.exists() else ""
    begin, end = text.find(f"<!-- {MARK}: begin"), text.find(f"<!-- {MARK}: end -->")
    if begin >= 0 and end > begin:
        text = text[:begin] + section + text[end + len(f"<!-- {MARK}: end -->") :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


async def cluster_main(n: int, *, write_docs: bool) -> None:
    """Start the cluster, run 1/2/3 instances and the scale-out, print and write the figures."""
    from altlas.orchestration.app.settings import LocalBrokerSettings
    from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
    from altlas.orchestration.devtools.localcluster import LocalCluster

    began = time.monotonic()
    lb = LocalBrokerSettings()
    cluster = LocalCluster(KafkaDistribution(lb.kafka_version, lb.scala_version))
    console.print("starting a 3-broker cluster ...")
    cluster.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            registry = _registry(workdir)
            console.print("warming the cluster up (not measured) ...")
            await backlog(cluster.bootstrap, 1000, 1, registry, workdir)
            runs: dict[int, Run] = {}
            for k in (1, 2, 3):
                console.print(f"{k} instance(s), {n} requests ...")
                runs[k] = await backlog(cluster.bootstrap, n, k, registry, workdir)
            rate = round(0.6 * runs[1].rps)
            console.print(f"scale-out 1 -> 2 -> 3 under {rate} requests/s ...")
            scaled = await scale_out(cluster.bootstrap, rate, registry, workdir)
    finally:
        cluster.stop()
    gaps = [scaled.longest_gap(j, j + 14.0) for j in scaled.joins]
    r1, r2, r3 = (runs[k].rps for k in (1, 2, 3))
    result = (
        f"RESULT rps_1={r1:.0f} rps_2={r2:.0f} rps_3={r3:.0f} scale_2={r2 / r1:.2f} scale_3={r3 / r1:.2f} "
        f"per_cpu_s_ratio_3={runs[3].per_cpu_s / runs[1].per_cpu_s:.2f} "
        f"partition_spread_3={Run.spread(runs[3].by_partition):.2f} "
        f"instance_spread_3={Run.spread(runs[3].by_instance):.2f} "
        f"steady_gap_s={scaled.longest_gap(1.0, scaled.joins[0]):.2f} "
        f"rebalance_gap_s={max(gaps):.2f} lost={scaled.lost} cores={os.cpu_count()}"
    )
    chart = False
    if write_docs:
        chart = _chart(runs, scaled, ROOT / "docs" / "scaling-cluster.png")
        section = _markdown(n, runs, scaled, result, chart, time.monotonic() - began)
        write_section(ROOT / "docs" / "performance.md", section)
        console.print("wrote docs/performance.md (its scaling section) and docs/scaling-cluster.png")
    for k, run in runs.items():
        console.print(
            f"{k}: {run.rps:.0f} req/s, {run.per_cpu_s:.0f} req per CPU-s, "
            f"instances {dict(run.by_instance)}, "
            f"partitions {dict(sorted(run.by_partition.items()))}"
        )
    print(result)
