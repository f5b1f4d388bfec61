"""JSON schemas of the describer's answers, and their validation.

One schema per task. The same schema constrains decoding (xgrammar in-process, vLLM's
structured outputs, an API's `response_format`) and validates the answer afterwards, so a
backend that ignores the constraint still cannot slip an invalid answer through.

Every string is printable ASCII without double quotes or backslashes, starting with a
letter (so "...", "-" or "42" is never an answer), bounded by a
`pattern` rather than `maxLength` (xgrammar ignores `maxLength` next to a pattern, and
OpenAI's strict mode does not accept it). The pattern keeps out everything that makes
constrained JSON go wrong: raw control characters, escape sequences, and the
partial UTF-8 sequences a byte-level sampler can produce inside a negated character class.
Text-to-image encoders such as CLIP are trained on ASCII text anyway. A string's length
in the JSON text then equals its length as a value and its size in bytes, arrays are
bounded by minItems/maxItems, and so the longest answer a schema allows is finite and
computable (`max_answer_bytes`), which gives each task its token limit.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The IUT's vocabulary (object types and their attributes, features, aspects) is the
# one JSON form's, shared with the orchestrator.
from regen.common.describer_json import ASPECTS, FEATURES, OBJECT_TYPES, attributes_of

# Printable ASCII (0x20-0x7e) less the double quote (0x22) and the backslash (0x5c); the
# first character of a text is a letter: a text without one ("...", "-", "3") is no answer.
_FIRST_CHAR = "[A-Za-z]"
_TEXT_CHAR = "[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e]"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_QUANTIFIER = re.compile(r"\{(\d+),(\d+)\}")

MAX_OBJECTS = 5
SCORE_MIN, SCORE_MAX = 1, 5
# A prompt's character bound for a token budget: about this many characters per token.
CHARS_PER_BUDGET_TOKEN = 6


@dataclass(frozen=True)
class AnswerBounds:
    """Length and count limits written into the schemas (part of every cache key)."""

    text_chars: int = 400
    field_chars: int = 120
    relationships: int = 8
    differences: int = 8

    def prompt_chars(self, token_budget: int) -> int:
        if token_budget <= 0:
            return self.text_chars
        return max(8, min(self.text_chars, token_budget * CHARS_PER_BUDGET_TOKEN))


def text(max_chars: int, *, required: bool = True) -> dict[str, Any]:
    """A string of at most `max_chars` characters that starts with a letter; one not
    `required` may also be empty."""
    body = f"{_FIRST_CHAR}{_TEXT_CHAR}{{0,{max_chars - 1}}}"
    # "(body|)", not "(body)?": xgrammar reads the latter as any string at all.
    return {"type": "string", "pattern": f"^{body}$" if required else f"^({body}|)$"}


def _choice(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


def _object(properties: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(properties)
    schema["additionalProperties"] = False
    return schema


def _scene_object(object_type: str, bounds: AnswerBounds) -> dict[str, Any]:
    attributes = {name: text(bounds.field_chars, required=False) for name in attributes_of(object_type)}
    return _object(
        {"name": text(bounds.field_chars), "type": _choice([object_type]), "attributes": _object(attributes)}
    )


def iut_form_schema() -> dict[str, Any]:
    """The IUT as requests and responses carry it (`regen.common.describer_json`), for the
    HTTP API's documentation: the answer schema's shape without its length bounds; a
    missing text reads as empty. The describer's input checks apply on top."""
    string = {"type": "string"}

    def scene_object(object_type: str) -> dict[str, Any]:
        attributes = _object({name: string for name in attributes_of(object_type)}, required=False)
        return _object({"name": string, "type": _choice([object_type]), "attributes": attributes}, required=False)

    return _object(
        {
            "global_description": string,
            "global_features": _object({name: string for name in FEATURES}, required=False),
            "objects": {
                "type": "array",
                "maxItems": MAX_OBJECTS,
                "items": {"anyOf": [scene_object(t) for t in OBJECT_TYPES]},
            },
            "relationships": {"type": "array", "items": string},
        },
        required=False,
    )


def iut_schema(bounds: AnswerBounds) -> dict[str, Any]:
    return _object(
        {
            "global_description": text(bounds.text_chars),
            "global_features": _object({name: text(bounds.field_chars) for name in FEATURES}),
            "objects": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_OBJECTS,
                "items": {"anyOf": [_scene_object(t, bounds) for t in OBJECT_TYPES]},
            },
            "relationships": {
                "type": "array",
                "minItems": 0,
                "maxItems": bounds.relationships,
                "items": text(bounds.field_chars),
            },
        }
    )


def prompt_schema(bounds: AnswerBounds, token_budget: int) -> dict[str, Any]:
    return _object({"prompt": text(bounds.prompt_chars(token_budget))})


def variants_schema(bounds: AnswerBounds, n: int, token_budget: int) -> dict[str, Any]:
    return _object(
        {
            "prompts": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": text(bounds.prompt_chars(token_budget)),
            }
        }
    )


def compare_schema(bounds: AnswerBounds) -> dict[str, Any]:
    difference = _object({"aspect": _choice(ASPECTS), "description": text(bounds.field_chars)})
    return _object(
        {"differences": {"type": "array", "minItems": 1, "maxItems": bounds.differences, "items": difference}}
    )


def judge_schema(bounds: AnswerBounds) -> dict[str, Any]:
    score = {"type": "integer", "minimum": SCORE_MIN, "maximum": SCORE_MAX}
    # The rationale comes first so the scores follow from it.
    return _object({"rationale": text(bounds.text_chars), "content_consistency": score, "perceptual_quality": score})


def schema_digest(schema: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(schema).encode()).hexdigest()[:16]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------- sizes


def _pattern_max_chars(pattern: str) -> int:
    """Longest string our own `text()` patterns accept (one class plus `{a,b}` runs)."""
    # A required text is one leading character class followed by a "{0,n}" run.
    return sum(int(hi) for _lo, hi in _QUANTIFIER.findall(pattern)) + pattern.count("][")


def max_answer_bytes(schema: dict[str, Any]) -> int:
    """Upper bound on the UTF-8 size of the compact JSON answer a schema allows.

    Everything is ASCII, one byte a character. A byte-level BPE token is at least one
    byte, so this also bounds the number of tokens."""
    if "anyOf" in schema:
        return max(max_answer_bytes(option) for option in schema["anyOf"])
    if "enum" in schema:
        return max(len(json.dumps(v).encode()) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema["properties"]
        inner = sum(len(json.dumps(key)) + 1 + max_answer_bytes(value) for key, value in props.items())
        return 2 + inner + max(0, len(props) - 1)
    if kind == "array":
        count = schema["maxItems"]
        return 2 + count * max_answer_bytes(schema["items"]) + max(0, count - 1)
    if kind == "string":
        return 2 + _pattern_max_chars(schema["pattern"])
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    raise ValueError(f"no size bound for schema {schema!r}")


# ---------------------------------------------------------------------------- checks


def _path(parts: Iterator[Any] | list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "answer"


def _describe(error) -> str:
    where = _path(list(error.absolute_path))
    if error.validator == "pattern":
        limit = _pattern_max_chars(error.validator_value)
        kind = "a non-empty text" if error.validator_value.startswith("^" + _FIRST_CHAR) else "empty or a text"
        return (
            f"{where}: must be {kind} of at most {limit} characters (now {len(error.instance)}) that starts with "
            "a letter, in plain ASCII without double quotes, backslashes or line breaks"
        )
    if error.validator in ("minItems", "maxItems"):
        count = len(error.instance) if isinstance(error.instance, list) else "?"
        return f"{where}: has {count} items; {error.validator} is {error.validator_value}"
    if error.validator == "anyOf":
        return f"{where}: must be an object of type person, animal or object with exactly that type's attributes"
    if error.validator == "additionalProperties":
        return f"{where}: {error.message}"
    return f"{where}: {error.message}"


@functools.cache
def _strict_validator() -> Any:
    """Draft 2020-12 with one change: "integer" means a JSON integer. The draft also
    accepts 4.0, which is then stored as a float and cannot be an int32 score."""
    from jsonschema import Draft202012Validator, validators  # here, so backends need not install it

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return validators.extend(Draft202012Validator, type_checker=checker)


def schema_problems(schema: dict[str, Any], value: Any) -> list[str]:
    """Every violation of `schema` in `value`, as short readable lines (empty: valid)."""
    validator = _strict_validator()(schema)
    problems = [_describe(e) for e in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))]
    for where, string in _strings(value, []):
        if _CONTROL_CHARS.search(string):
            problems.append(f"{_path(where)}: contains control characters (line breaks, tabs or similar)")
    return problems


def _strings(value: Any, where: list[Any]) -> Iterator[tuple[list[Any], str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, [*where, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, [*where, index])


class DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise DuplicateKey(key)
        value[key] = item
    return value


def loads_strict(text: str) -> Any:
    """json.loads that refuses an object with a key twice (DuplicateKey): plain json.loads
    keeps the last, so `{"score": 7, "score": 4}` would silently read as 4. Raw control
    characters inside strings are tolerated here; the schema check reports them."""
    return json.loads(text, strict=False, object_pairs_hook=_refuse_duplicates)


def parse_json_answer(raw: str) -> tuple[Any, str | None]:
    """Parse a model's JSON answer leniently: surrounding prose or code fences are cut
    away and raw control characters inside strings are tolerated here (the schema check
    then reports them); a key given twice is a problem. Returns (value, None) or (None,
    problem)."""
    body = raw.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        return None, "the answer contains no JSON object"
    try:
        return loads_strict(body[start : end + 1]), None
    except DuplicateKey as exc:
        return None, f"the key {exc.args[0]!r} appears twice in one object; give every key once"
    except json.JSONDecodeError as exc:
        return None, f"the answer is not valid JSON ({exc.msg} at character {exc.pos})"
