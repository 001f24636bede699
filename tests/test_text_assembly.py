"""Turning token bytes into text: stop sequences across tokens, split UTF-8, streamed chunks."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from altlas.models.llama_text import TextAssembler


def _run(pieces: list[bytes], stops: list[str]) -> tuple[str, list[str], bool]:
    assembler = TextAssembler(stops)
    chunks = []
    for piece in pieces:
        hit = assembler.feed(piece)
        if chunk := assembler.ready():
            chunks.append(chunk)
        if hit:
            break
    if rest := assembler.rest():
        chunks.append(rest)
    return assembler.text, chunks, assembler.stopped


def test_a_stop_sequence_split_over_three_tokens_is_found_and_never_streamed() -> None:
    text, chunks, stopped = _run([b"Hello ", b"wor", b"ld. ", b"EN", b"D", b" more"], ["END"])
    assert stopped and text == "Hello world. "
    assert "".join(chunks) == text
    assert all("E" not in c for c in chunks)


def test_a_character_split_over_tokens_is_only_streamed_whole() -> None:
    euro = "€".encode()  # three bytes
    text, chunks, _ = _run([b"price: ", euro[:1], euro[1:2], euro[2:], b" 5"], [])
    assert text == "price: € 5"
    assert chunks == ["price: ", "€", " 5"]


def test_the_earliest_of_several_stop_sequences_wins() -> None:
    text, _, stopped = _run([b"a b c d e"], ["d", "b c"])
    assert stopped and text == "a "


def test_text_that_only_looks_like_a_stop_start_is_released_at_the_end() -> None:
    text, chunks, stopped = _run([b"abc", b"ST"], ["STOP"])
    assert not stopped and text == "abcST" and chunks == ["abc", "ST"]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("abc xé€😀")), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
    stops=st.lists(st.text(alphabet=st.sampled_from(list("abc é")), min_size=1, max_size=3), max_size=3),
)
def test_streamed_chunks_always_add_up_to_the_final_text(
    text: str, cuts: list[int], stops: list[str]
) -> None:
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in pairwise(points)]
    final, chunks, stopped = _run(pieces, stops)
    assert "".join(chunks) == final
    found = [text.index(stop) for stop in stops if stop in text]
    expected = text[: min(found)] if found else text
    assert final == expected  # cut before the earliest stop, and nothing lost otherwise
    assert stopped == bool(found)
