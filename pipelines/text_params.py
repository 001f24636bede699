"""Reading and checking the sampling params of ``generate`` and ``chat`` requests.

Params arrive as a map of null, bool, long, double, string or list of strings.
Every value is checked here, on the decode thread, so a bad request is answered
with INVALID_PARAMS before it ever waits for the model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from llama_cpp.llama_grammar import json_schema_to_gbnf

from altlas.models.llama_text import Sampling
from altlas.pipelines.base import bad_param as _bad
from altlas.pipelines.base import float_param, int_param
from altlas.schemas.types import ParamValue

MAX_NEW_TOKENS = 32_768
#: llama.cpp's default: a request without params samples.
DEFAULT_TEMPERATURE = 0.8
MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_GRAMMAR_CHARS = 64 * 1024
#: Deepest nesting of parentheses in a grammar: llama.cpp parses groups recursively, and
#: some ten thousand nested groups overflow the thread's stack (the whole process dies).
MAX_GRAMMAR_NESTING = 256
#: Largest minItems/maxLength-style bound a JSON schema may carry (each one unrolls into grammar rules).
MAX_SCHEMA_REPEAT = 256


def bool_param(params: Mapping[str, ParamValue], name: str, default: bool = False) -> bool:
    """A boolean (true/false), nothing else."""
    value = params.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"param {name} must be true or false, got {value!r}")
    return value


def stop_param(params: Mapping[str, ParamValue]) -> tuple[str, ...]:
    """``stop``: a string or a list of up to 16 non-empty strings."""
    value = params.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("param stop must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise _bad(f"param stop has {len(stops)} entries; at most {MAX_STOPS}")
    if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise _bad(f"param stop entries must be 1 to {MAX_STOP_CHARS} characters")
    return tuple(stops)


def grammar_param(params: Mapping[str, ParamValue]) -> str | None:
    """GBNF from ``grammar``, or made from ``json_schema`` (a JSON string); not both."""
    grammar, schema = params.get("grammar"), params.get("json_schema")
    if grammar is not None and schema is not None:
        raise _bad("give either grammar or json_schema, not both")
    for name, value in (("grammar", grammar), ("json_schema", schema)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise _bad(f"param {name} must be a non-empty string")
        if isinstance(value, str) and len(value) > MAX_GRAMMAR_CHARS:
            raise _bad(f"param {name} is longer than {MAX_GRAMMAR_CHARS} characters")
    if isinstance(grammar, str):
        _check_nesting(grammar)
        return grammar
    if isinstance(schema, str):
        try:
            parsed = json.loads(schema)
        except ValueError as exc:
            raise _bad(f"param json_schema is not a usable JSON schema: {exc}") from exc
        _check_repeats(parsed)
        try:
            gbnf = str(json_schema_to_gbnf(schema))
        except Exception as exc:  # a schema the converter cannot express
            raise _bad(f"param json_schema is not a usable JSON schema: {exc}") from exc
        if len(gbnf) > MAX_GRAMMAR_CHARS:  # the expansion, not the request, is what the sampler walks
            raise _bad(
                f"param json_schema expands to {len(gbnf)} grammar characters; at most {MAX_GRAMMAR_CHARS}"
            )
        _check_nesting(gbnf)
        return gbnf
    return None


def _check_nesting(gbnf: str) -> None:
    """Refuse groups nested deeper than llama.cpp's recursive parser can safely follow."""
    depth, quote, i = 0, "", 0
    while i < len(gbnf):
        c = gbnf[i]
        if quote:  # inside "..." or [...]: only the closing mark counts, escapes skip a character
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in '"[':
            quote = '"' if c == '"' else "]"
        elif c == "#":  # a comment runs to the end of the line
            end = gbnf.find("\n", i)
            i = len(gbnf) if end < 0 else end
        elif c == "(":
            depth += 1
            if depth > MAX_GRAMMAR_NESTING:
                raise _bad(f"param grammar nests groups deeper than {MAX_GRAMMAR_NESTING}")
        elif c == ")":
            depth -= 1
        i += 1


_REPEATS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")


def _check_repeats(node: object, depth: int = 0) -> None:
    """Refuse repetition bounds the converter would unroll into a huge grammar, before it does."""
    if depth > 64:
        raise _bad("param json_schema nests too deeply")
    if isinstance(node, dict):
        for key in _REPEATS:
            bound = node.get(key)
            if isinstance(bound, int | float) and not isinstance(bound, bool) and bound > MAX_SCHEMA_REPEAT:
                raise _bad(f"param json_schema: {key} {bound} is above {MAX_SCHEMA_REPEAT}")
        for value in node.values():
            _check_repeats(value, depth + 1)
    elif isinstance(node, list):
        for value in node:
            _check_repeats(value, depth + 1)


def sampling_from(params: Mapping[str, ParamValue]) -> Sampling:
    """The Sampling a request's params ask for (llama.cpp's defaults for the rest)."""
    seed = params.get("seed")
    return Sampling(
        max_tokens=int_param(params, "max_tokens", 256, lo=1, hi=MAX_NEW_TOKENS),
        temperature=float_param(params, "temperature", DEFAULT_TEMPERATURE, lo=0.0, hi=5.0),
        top_p=float_param(params, "top_p", 0.95, lo=0.0, hi=1.0),
        top_k=int_param(params, "top_k", 40, lo=0, hi=1_000_000),
        min_p=float_param(params, "min_p", 0.05, lo=0.0, hi=1.0),
        repeat_penalty=float_param(params, "repeat_penalty", 1.0, lo=0.0, hi=10.0),
        seed=None if seed is None else int_param(params, "seed", 0, lo=0, hi=2**32 - 1),
        stop=stop_param(params),
        grammar=grammar_param(params),
    )
