"""A hostile tenant's text requests against the real model: none may stall the others.

Sampling, grammar-constrained sampling included, runs on a context's decode
loop between steps, so one request whose grammar is slow to apply holds up
every request sharing that context. These grammars parse, are a few hundred
characters long, and before the checks cost seconds per token.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from altlas.models import grammar_guard, llama_scheduler
from altlas.models.grammar_guard import GrammarGuard
from altlas.models.llama import LlamaRuntime
from altlas.models.llama_scheduler import Job
from altlas.models.llama_text import GenerationRequest, InvalidGrammarError, Sampling
from altlas.models.registry import ModelRegistry
from altlas.pipelines.text_generation import TextGenerationPipeline
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import TextGeneration


def _alternatives(n: int) -> str:
    """``n`` identical alternatives: each token's check walks n ways at every character."""
    return "(" + " | ".join(['"a"'] * n) + ")*"


@pytest.fixture(scope="module")
def smol(smollm2_gguf: Path) -> Iterator[LlamaRuntime]:
    registry = ModelRegistry.from_dict(
        {
            "models": [
                {
                    "id": "m",
                    "tasks": ["text.generate"],
                    "backend": "llama.cpp",
                    "path": str(smollm2_gguf),
                    "params": {"n_ctx": 512, "batch_sequences": 2, "contexts": 1},
                }
            ]
        }
    )
    runtime = LlamaRuntime(registry.get("m"))
    runtime.load()
    yield runtime
    runtime.unload()


def _greedy(max_tokens: int, grammar: str | None = None) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, grammar=grammar)


def _before_each_probe(monkeypatch: pytest.MonkeyPatch, before: Callable[[], object]) -> None:
    """Run ``before`` ahead of every grammar probe (a probe, not a verdict from memory)."""
    real = GrammarGuard._step_cost

    def wrapped(self: GrammarGuard, sampler: object) -> float:
        before()
        return real(self, sampler)

    monkeypatch.setattr(GrammarGuard, "_step_cost", wrapped)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per grammar probe run."""
    count: list[int] = []
    _before_each_probe(monkeypatch, lambda: count.append(1))
    return count


@pytest.fixture
def release(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every grammar probe waits for this event."""
    event = threading.Event()
    _before_each_probe(monkeypatch, lambda: event.wait(30))
    yield event
    event.set()


def test_an_ambiguous_grammar_is_refused_before_it_stalls_its_neighbour(
    smol: LlamaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    reached: list[Job] = []
    real = llama_scheduler.Scheduler.submit

    def recorded(self: llama_scheduler.Scheduler, job: Job) -> llama_scheduler.Generation:
        reached.append(job)
        return real(self, job)

    monkeypatch.setattr(llama_scheduler.Scheduler, "submit", recorded)
    neighbour = smol.submit(GenerationRequest(prompt="Once upon a time", sampling=_greedy(12)))
    hostile = smol.submit(
        GenerationRequest(prompt="Say a", sampling=_greedy(3, "root ::= " + _alternatives(40)))
    )
    with pytest.raises(InvalidGrammarError, match="too ambiguous") as caught:
        hostile.result(timeout=60)
    assert caught.value.code == ErrorCode.INVALID_PARAMS.value
    assert neighbour.result(timeout=60).completion_tokens == 12
    # Refused before the decode loop: its sampling never ran beside the neighbour's.
    assert [job.grammar for job in reached] == [None]


def test_repeated_optional_repetitions_are_refused(smol: LlamaRuntime) -> None:
    with pytest.raises(InvalidGrammarError, match="too ambiguous"):
        smol.generate(GenerationRequest(prompt="Say", sampling=_greedy(2, "root ::= ([a-z]*){0,30}")))


def test_a_grammar_that_turns_costly_later_is_stopped_after_one_slow_step(
    smol: LlamaRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cheap while the literal leads (the probe passes), costly once it is written.
    monkeypatch.setattr(llama_scheduler, "MAX_GRAMMAR_STEP_S", 0.1)
    grammar = 'root ::= "The answer is" ' + _alternatives(40)
    with pytest.raises(InvalidGrammarError, match="to constrain one token"):
        smol.generate(GenerationRequest(prompt="Question:", sampling=_greedy(30, grammar)))
    after = smol.generate(GenerationRequest(prompt="The capital of France is", sampling=_greedy(4)))
    assert after.text.startswith(" Paris")  # the context goes on serving
    again = smol.submit(GenerationRequest(prompt="Question:", sampling=_greedy(30, grammar)))
    assert again.done()  # remembered: refused on submit, it never reaches the decode loop
    with pytest.raises(InvalidGrammarError, match="to constrain one token"):
        again.result()


def test_a_grammar_is_probed_once_and_its_verdict_remembered(smol: LlamaRuntime, probes: list[int]) -> None:
    hostile = "root ::= " + _alternatives(41)  # not the grammar of another test: a fresh verdict
    for _ in range(3):
        with pytest.raises(InvalidGrammarError, match="too ambiguous"):
            smol.generate(GenerationRequest(prompt="Say a", sampling=_greedy(2, hostile)))
    fine = 'root ::= "yes" | "no" | "maybe"'
    for _ in range(3):
        assert (
            smol.generate(GenerationRequest(prompt="Answer:", sampling=_greedy(2, fine))).completion_tokens
            >= 1
        )
    assert len(probes) == 2


def test_a_refusal_for_time_lapses_so_a_slowed_host_locks_no_grammar_out(
    smol: LlamaRuntime, probes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grammar_guard, "TIMED_REFUSAL_S", 0.0)
    hostile = "root ::= " + _alternatives(42)
    for _ in range(2):
        with pytest.raises(InvalidGrammarError, match="too ambiguous"):
            smol.generate(GenerationRequest(prompt="Say a", sampling=_greedy(2, hostile)))
    unparsable = "root ::= ("
    for _ in range(2):
        with pytest.raises(InvalidGrammarError, match="does not parse"):
            smol.generate(GenerationRequest(prompt="Say a", sampling=_greedy(2, unparsable)))
    assert (
        len(probes) == 2
    )  # probed again once its refusal lapsed (the unparsable one never reaches the probe)


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= "yes" | "no"',
        "root ::= [a-z]{0,200}",
        "root ::= [^\\x00]*",
    ],
)
def test_ordinary_grammars_pass_the_probe(smol: LlamaRuntime, grammar: str) -> None:
    result = smol.generate(GenerationRequest(prompt="Answer:", sampling=_greedy(3, grammar)))
    assert result.completion_tokens >= 1


def test_a_json_schema_request_still_answers_json(smol: LlamaRuntime) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": [f"c{i}" for i in range(200)]}, "tags": {"type": "array"}},
        "required": ["colour"],
    }
    pipeline = TextGenerationPipeline()
    prepared = pipeline.prepare(
        "A colour as JSON:",
        {"json_schema": json.dumps(schema), "temperature": 0, "max_tokens": 30},
        smol.spec,
    )
    (out,) = pipeline.run(smol, [prepared])
    assert isinstance(out, TextGeneration)
    assert json.loads(out.text)["colour"].startswith("c")


def test_deeply_nested_groups_are_refused_before_they_reach_llama_cpp(smol: LlamaRuntime) -> None:
    # 20 000 nested groups (40 kB, under the size cap) overflow llama.cpp's recursive
    # grammar parser: the whole process dies with a segmentation fault.
    grammar = "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000
    with pytest.raises(InvalidRequestError, match="nests groups") as caught:
        TextGenerationPipeline().prepare("Say a", {"grammar": grammar}, smol.spec)
    assert caught.value.code is ErrorCode.INVALID_PARAMS


def test_parentheses_in_literals_classes_and_comments_do_not_count_as_nesting(smol: LlamaRuntime) -> None:
    grammar = 'root ::= "' + "(" * 300 + '" [(]' + " # " + "(" * 300 + '\n"x"'
    prepared = TextGenerationPipeline().prepare("Say a", {"grammar": grammar, "max_tokens": 1}, smol.spec)
    assert prepared.data.sampling.grammar == grammar


def test_a_new_grammar_is_probed_off_the_submitting_thread(
    smol: LlamaRuntime, release: threading.Event
) -> None:
    # The lane submits every request of the model from one thread: a probe there, up to its
    # whole time limit per grammar never seen before, would hold up everybody's requests.
    grammar = 'root ::= "yes" | "no" | "perhaps"'
    probed = smol.submit(GenerationRequest(prompt="Answer:", sampling=_greedy(2, grammar)))
    assert not probed.done()  # submit returned while the probe is held
    plain = smol.generate(GenerationRequest(prompt="The capital of France is", sampling=_greedy(4)))
    assert plain.text.startswith(" Paris")  # served meanwhile
    assert not probed.done()
    release.set()
    assert probed.result(timeout=30).completion_tokens >= 1


def test_unloading_answers_requests_whose_grammar_is_still_being_probed(
    smollm2_gguf: Path, release: threading.Event
) -> None:
    spec = {"id": "u", "tasks": ["text.generate"], "backend": "llama.cpp", "path": str(smollm2_gguf)}
    runtime = LlamaRuntime(ModelRegistry.from_dict({"models": [{**spec, "params": {"n_ctx": 256}}]}).get("u"))
    runtime.load()
    first = runtime.submit(GenerationRequest(prompt="A:", sampling=_greedy(2, 'root ::= "x"')))
    queued = runtime.submit(GenerationRequest(prompt="A:", sampling=_greedy(2, 'root ::= "y"')))
    threading.Timer(0.5, release.set).start()
    runtime.unload()
    assert first.done() and queued.done()  # nobody waits for ever
    with pytest.raises(Exception, match="unloaded"):
        queued.result()
