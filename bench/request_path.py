"""How far one vision request travels through altlas's own code, from the fetch of its record to
the commit of its offset: files visited, hops between modules, entries into each module, lines.

Run from a checkout's root: ``python -m bench.request_path``. It measures the checkout it lives in:
before anything of altlas is imported, every other ``altlas`` on ``sys.path`` (the strict editable
tree included) is dropped and a link tree of this checkout's folders takes its place, so copying this
file into an older checkout's ``bench/`` measures that checkout (its old flat module names are tried
after the new ones).

Method:
- a local broker (``bench.common.broker``) and an in-process ``Orchestrator`` serving only the
  vision modality, with one tiny ONNX model (``tests.builders.mean_color_registry``), default
  settings otherwise (at-least-once);
- one warm-up request is answered and committed first, so model loading, lane creation and
  first-time imports are not counted;
- ``sys.setprofile`` (event loop thread) and ``threading.setprofile`` (decode and inference
  threads, installed before they start) see every Python call and return. An event is kept only
  when the function lives in altlas's folders (schemas/ models/ pipelines/ consumers/ producers/
  orchestration/, by real path);
- which work belongs to the request: a task factory records which task created which; kept are the
  stream loop's task (from the start of the ``BatchingConsumer.next_batch`` call that returns the
  record until that loop asks for the next batch), every task descended from it (the batch's
  handler, lane runners, fallback attempts), callbacks run outside any task, and every other thread;
  all only while the request is in flight, which ends with the final return of
  ``BatchingConsumer.finished`` (its offset committed). Only one request is in flight then;
- a coroutine suspended in an ``await`` and resumed from it makes no event (that says when the event
  loop switched tasks, not where the code goes); its first entry and final return do. A generator's
  (or an async generator's) yield of a value and resumption from it do: control really goes back
  to its caller and enters it again (``with manager.use(...)``);
- where control is after an event: a call is in the callee's module; a return or a yield is in the
  module of the nearest altlas caller (through helpers such as contextlib's), and is not counted
  when it goes back to code outside altlas. A hop is two consecutive kept events in different
  modules; a module's entries are the hops into it (plus one for where the path starts).

Ends with ``RESULT files=.. orchestration_files=.. hops=.. lines=..``; ``--hops`` also lists every
hop in order.
"""

from __future__ import annotations

import argparse
import asyncio
import dis
import importlib
import os
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, FrameType, ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("schemas", "models", "pipelines", "consumers", "producers", "orchestration")
_ASYNC = 0x80 | 0x100 | 0x200  # CO_COROUTINE, CO_ITERABLE_COROUTINE, CO_ASYNC_GENERATOR
_ASYNC_GENERATOR = 0x200
_YIELD, _WRAP = dis.opmap["YIELD_VALUE"], dis.opmap["ASYNC_GEN_WRAP"]
_FETCH = ("consumers/stream.py", "BatchingConsumer.next_batch")
_FINISH = ("consumers/stream.py", "BatchingConsumer.finished")


def _use_this_checkout() -> None:
    """Make ``import altlas`` resolve to this checkout's folders and nothing else (a namespace package
    would otherwise merge this checkout with whatever altlas is installed)."""
    for entry in list(sys.path):
        if entry and os.path.isdir(os.path.join(entry, "altlas")):
            sys.path.remove(entry)
    shim = Path(tempfile.mkdtemp(prefix="altlas-request-path-")) / "altlas"
    shim.mkdir()
    for folder in FOLDERS:
        (shim / folder).symlink_to(ROOT / folder)
    sys.path.insert(0, str(shim.parent))
    if str(ROOT) not in sys.path:
        sys.path.insert(1, str(ROOT))  # bench.common and tests.builders of this checkout


def _module(*names: str) -> ModuleType:
    """The first of ``altlas.orchestration.<name>`` that imports (new layout first, then the flat one)."""
    for name in names:
        try:
            return importlib.import_module(f"altlas.orchestration.{name}")
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {names} in {ROOT}")


@dataclass
class Event:
    """One kept call or return: where control is after it, and what ran."""

    where: str
    kind: str
    function: str
    context: str


@dataclass
class Tracer:
    """The profile function and what it decides belongs to the request."""

    loop: asyncio.AbstractEventLoop
    consumer: Any = None
    armed: bool = False
    fresh: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    events: list[Event] = field(default_factory=list)
    _buffer: list[Event] = field(default_factory=list)
    _fetch_task: asyncio.Task[Any] | None = None
    _fetch_phase: str = "idle"  # idle -> buffering -> captured -> over
    _parents: weakref.WeakKeyDictionary[asyncio.Task[Any], asyncio.Task[Any] | None] = field(
        default_factory=weakref.WeakKeyDictionary
    )
    _files: dict[str, str | None] = field(default_factory=dict)
    # Keyed by id (the code is kept alive in the value): code objects of different files compare equal.
    _codes: dict[int, tuple[str | None, bytes, CodeType]] = field(default_factory=dict)
    _main: int = field(default_factory=threading.get_ident)

    # ------------------------------------------------------------ bookkeeping
    def task_factory(
        self, loop: asyncio.AbstractEventLoop, coro: Any, context: Any = None
    ) -> asyncio.Task[Any]:
        """Create tasks as asyncio does, remembering each one's parent."""
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
        self._parents[task] = asyncio.current_task(loop)
        return task

    def _descends(self, task: asyncio.Task[Any]) -> bool:
        seen = 0
        node: asyncio.Task[Any] | None = task
        while node is not None and seen < 64:
            if node is self._fetch_task:
                return True
            node = self._parents.get(node)
            seen += 1
        return False

    def _file(self, filename: str) -> str | None:
        if filename not in self._files:
            real = os.path.realpath(filename)
            rel = os.path.relpath(real, ROOT)
            self._files[filename] = rel if rel.split(os.sep, 1)[0] in FOLDERS else None
        return self._files[filename]

    def _code(self, code: CodeType) -> tuple[str | None, bytes, CodeType]:
        info = self._codes.get(id(code))
        if info is None:
            mod = self._file(code.co_filename)
            info = self._codes[id(code)] = (mod, code.co_code if mod is not None else b"", code)
        return info

    # ------------------------------------------------------------ the profile function
    def _caller(self, frame: FrameType) -> str | None:
        """The altlas module control goes back to when ``frame`` returns or yields: through helpers
        such as contextlib's, never past the event loop (a task's coroutine returns to no one)."""
        back = frame.f_back
        for _ in range(4):
            if back is None or "asyncio" in back.f_code.co_filename:
                return None
            mod = self._code(back.f_code)[0]
            if mod is not None:
                return mod
            back = back.f_back
        return None

    @staticmethod
    def _awaiting(frame: FrameType, event: str, raw: bytes) -> bool:
        """Whether a coroutine's event is only the event loop switching: resumed after an await
        (``RESUME 3``) or suspended in one (a ``YIELD_VALUE`` an async generator did not wrap)."""
        at = frame.f_lasti
        values = bool(frame.f_code.co_flags & _ASYNC_GENERATOR)
        if event == "call":
            return raw[at + 1] != 0 and not (values and raw[at + 1] == 1)
        return raw[at] == _YIELD and not (values and raw[at - 2] == _WRAP)

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        """Keep the altlas calls and returns that belong to the request."""
        if not self.armed or event[1] == "_" or self.done.is_set():  # c_call, c_return, c_exception
            return
        code = frame.f_code
        mod, raw, _ = self._code(code)
        if mod is None:
            return
        if code.co_flags & _ASYNC and self._awaiting(frame, event, raw):
            return
        where = mod if event == "call" else self._caller(frame)
        if threading.get_ident() != self._main:
            if self.started and where is not None:
                self.events.append(Event(where, event, code.co_qualname, threading.current_thread().name))
            return
        self._on_loop(frame, event, arg, (mod, code.co_qualname), where)

    def _on_loop(
        self, frame: FrameType, event: str, arg: Any, function: tuple[str, str], where: str | None
    ) -> None:
        task = asyncio.current_task(self.loop)
        if function == _FETCH and event == "call" and frame.f_locals.get("self") is self.consumer:
            self._fetch_task = task
            if self._fetch_phase == "captured":
                self._fetch_phase = "over"  # the loop went on to the next batch: not this request's
            elif self._fetch_phase in ("idle", "buffering"):
                self._fetch_phase = "buffering"
                self._buffer = []
                self.fresh.set()
        if task is not None and task is self._fetch_task:
            kept = self._fetch_phase in ("buffering", "captured")
        else:
            kept = self.started and (task is None or self._descends(task))
        if kept and where is not None:
            ev = Event(where, event, function[1], "loop" if task is None else task.get_name())
            (
                self._buffer if self._fetch_phase == "buffering" and task is self._fetch_task else self.events
            ).append(ev)
        if function == _FETCH and event == "return" and task is self._fetch_task:
            if self._fetch_phase == "buffering" and isinstance(arg, list) and arg:
                self.events.extend(self._buffer)
                self._fetch_phase = "captured"
                self.started = True
            self._buffer = []
        elif function == _FINISH and event == "return" and self.started and kept:
            self.done.set()


@dataclass
class Report:
    """The figures of one traced path."""

    files: list[str]
    hops: int
    entries: Counter[str]
    lines: dict[str, int]
    route: list[tuple[str, str, str, str]]  # (from module, to module, what moved control, task or thread)

    @property
    def orchestration_files(self) -> int:
        """Files of the path inside orchestration/."""
        return sum(f.startswith("orchestration/") for f in self.files)


def analyse(events: list[Event]) -> Report:
    """Hops, entries and lines of the modules the kept events passed through."""
    entries: Counter[str] = Counter()
    route: list[tuple[str, str, str, str]] = []
    previous: str | None = None
    for ev in events:
        if ev.where != previous:
            entries[ev.where] += 1
            if previous is not None:
                how = f"calls {ev.function}" if ev.kind == "call" else f"{ev.function} returns"
                route.append((previous, ev.where, how, ev.context))
            previous = ev.where
    files = list(entries)  # in order of first entry
    lines = {f: len((ROOT / f).read_text().splitlines()) for f in files}
    return Report(files=files, hops=len(route), entries=entries, lines=lines, route=route)


def show(report: Report, *, hops: bool) -> None:
    """A table per module, optionally every hop, and the RESULT line."""
    order = report.files
    width = max((len(f) for f in order), default=10)
    print(f"request path of {ROOT}: from the fetch of one vision record to the commit of its offset")
    print(f"{'#':>3}  {'module (in order of first entry)':<{width}}  {'entries':>7}  {'lines':>5}")
    for i, f in enumerate(order, 1):
        print(f"{i:>3}  {f:<{width}}  {report.entries[f]:>7}  {report.lines[f]:>5}")
    total = sum(report.lines.values())
    print(f"     {'total':<{width}}  {report.hops + 1:>7}  {total:>5}")
    calls = sum(how.startswith("calls ") for _, _, how, _ in report.route)
    print(
        f"hops: {report.hops} ({calls} calls into another module, {report.hops - calls} returns out of one)"
    )
    inside = sum(
        a.startswith("orchestration/") and b.startswith("orchestration/") for a, b, _, _ in report.route
    )
    print(f"orchestration/: {report.orchestration_files} modules, {inside} hops between two of them")
    if hops:
        print("\nhops in order:")
        for i, (src, dst, how, where) in enumerate(report.route, 1):
            print(f"{i:>3}  {src} -> {dst}  ({how}; {where})")
    print(
        f"RESULT files={len(report.files)} orchestration_files={report.orchestration_files} "
        f"hops={report.hops} lines={total}"
    )


async def trace_one_request(bootstrap: str, workdir: Path) -> list[Event]:
    """Serve one warm-up and one measured vision request; the kept events of the measured one."""
    from tests.builders import mean_color_classifier, mean_color_registry
    from tests.images import solid

    settings_mod = _module("app.settings", "settings")
    service = _module("app.service", "service")
    kafka_clients = _module("app.kafka_clients", "kafka_clients")
    client_mod = _module("clients.client", "client")

    mean_color_classifier(workdir / "mean_color.onnx")
    registry = mean_color_registry(workdir)
    tag = uuid.uuid4().hex[:8]
    topics = {
        name: f"p{tag}.{default}"
        for name, default in settings_mod.Settings().topics.model_dump().items()
        if isinstance(default, str)
    }
    settings = settings_mod.load_settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": f"path-{tag}"},
        topics=topics,
        instance_id=f"path-{tag}",
        metrics={"port": 0},
        modalities=["vision"],
    )
    loop = asyncio.get_running_loop()
    tracer = Tracer(loop)
    loop.set_task_factory(tracer.task_factory)
    threading.setprofile(tracer.profile)  # decode and inference threads start after this
    orchestrator = service.Orchestrator(settings, registry=registry)
    running = asyncio.create_task(orchestrator.run())
    started = asyncio.create_task(orchestrator.started.wait())
    await asyncio.wait([running, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        running.result()
    tracer.consumer = orchestrator.streams["vision"].consumer
    client = client_mod.AltlasClient(
        kafka_clients.client_kwargs(settings.kafka, client_suffix="bench"),
        service.build_codec(settings),
        settings.topics,
    )
    try:
        async with client, client.reader(settings.topics.results("vision")) as reader:

            async def ask(request_id: str, rgb: tuple[int, int, int]) -> None:
                request = client_mod.make_request(
                    "vision", "classify", solid(rgb), model="c", request_id=request_id
                )
                await client.send_many([request])
                got = await client.collect(reader, "vision", [request_id], 60)
                assert request_id in got and got[request_id].status.value == "ok", got

            await ask("warm-up", (200, 30, 30))
            for _ in range(200):  # the warm-up's offset is committed once nothing is in flight
                if not tracer.consumer.inflight:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            sys.setprofile(tracer.profile)
            tracer.armed = True
            await asyncio.to_thread(tracer.fresh.wait, 5)  # a next_batch call begins after arming
            await ask("measured", (30, 30, 200))
            await asyncio.to_thread(tracer.done.wait, 30)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        tracer.armed = False
        orchestrator.stop()
        await asyncio.wait_for(running, 60)
    if not tracer.done.is_set():
        raise SystemExit("the measured request's offset was not seen committed")
    return tracer.events


def main() -> None:
    """Start a broker, trace one request, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hops", action="store_true", help="list every hop in order")
    args = parser.parse_args()
    _use_this_checkout()
    from bench.common import broker

    began = time.perf_counter()
    with broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        events = asyncio.run(trace_one_request(bootstrap, Path(tmp)))
    show(analyse(events), hops=args.hops)
    print(f"({len(events)} events, {time.perf_counter() - began:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
