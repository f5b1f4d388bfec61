"""The review of a model's answer: parsed, checked against the task's schema, then for
non-answers, then by the task's own rules. It is the one validation of every answer,
fresh or read back from the cache, before it is stored or converted: nothing that fails
it is ever cached or sent.

Each task's review takes a schema-valid value and returns it normalised (texts stripped)
with the list of problems; problems send the answer to repair."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from regen.describer.budget import TokenCounter, budget_problem
from regen.describer.schemas import parse_json_answer, schema_problems

# Schema-valid JSON -> (normalised JSON, problems).
Review = Callable[[Any], tuple[Any, list[str]]]

# Texts that stand in for an answer instead of giving one (compared casefolded, without
# surrounding punctuation). A text with no letter at all is refused by the schema.
PLACEHOLDERS = frozenset(
    {
        "n/a",
        "n a",
        "na",
        "none",
        "null",
        "nil",
        "undefined",
        "unknown",
        "unspecified",
        "not applicable",
        "not available",
        "string",
        "str",
        "placeholder",
        "tbd",
        "todo",
        "xxx",
        "lorem ipsum",
        "your answer",
        "insert text here",
    }
)
# A copied phrase of the instructions counts from this many words on (shorter ones,
# "soft light", are ordinary answers).
ECHO_MIN_WORDS = 3
_NON_WORD = re.compile(r"[^a-z0-9]+")


def check_answer(schema: dict[str, Any], review: Review, raw: str, instructions: str = "") -> tuple[Any, list[str]]:
    """The model's raw text -> (normalised answer, problems); no problems: a valid answer."""
    value, problem = parse_json_answer(raw)
    if problem is not None:
        return None, [problem]
    return validate(schema, review, value, instructions)


def validate(schema: dict[str, Any], review: Review, value: Any, instructions: str = "") -> tuple[Any, list[str]]:
    """A parsed answer (or a cached one) -> (normalised answer, problems): the schema, with
    "integer" meaning a JSON integer (4.0 is refused); no placeholder, no text that is its
    own key's name, no phrase copied from `instructions` (the task's fixed text); then the
    task's own rules."""
    problems = schema_problems(schema, value)
    if problems:
        return None, problems
    value, problems = review(value)
    return value, non_answers(value, instructions) + problems


def _words(text: str) -> str:
    return _NON_WORD.sub(" ", text.casefold()).strip()


def _texts(value: Any, where: str = "", key: str = "") -> Iterator[tuple[str, str, str]]:
    """(path, the key the text is under, text) of every string in an answer."""
    if isinstance(value, str):
        yield where, key, value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _texts(item, f"{where}.{name}" if where else name, name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(item, f"{where}[{index}]", key)


def non_answers(value: Any, instructions: str = "") -> list[str]:
    """Texts that are not answers: placeholders ("n/a", "string", ...), a text that only
    repeats its key ("rationale": "rationale"), and phrases of ECHO_MIN_WORDS or more
    words copied from the instructions (the format example, the rubric)."""
    source = f" {_words(instructions)} "
    problems = []
    for where, key, text in _texts(value):
        words = _words(text)
        if not words:
            continue
        optional = ".attributes." in where
        hint = "; write what the image shows" + (", or an empty string if it does not apply" if optional else "")
        if words in PLACEHOLDERS or words.startswith("lorem ipsum"):
            problems.append(f"{where}: {text!r} is a placeholder, not an answer{hint}")
        elif words == _words(key):
            problems.append(f"{where}: {text!r} repeats the key's name instead of answering{hint}")
        elif len(words.split()) >= ECHO_MIN_WORDS and f" {words} " in source:
            problems.append(f"{where}: {text!r} copies the instructions instead of answering{hint}")
    return problems


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    return value


def _blank_required(value: Any, where: str = "") -> list[str]:
    """Required texts (pattern starting with a non-space) may still be blank after
    stripping odd Unicode spaces; report them."""
    problems: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "attributes":
                problems += _blank_required(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += _blank_required(item, f"{where}[{index}]")
    elif isinstance(value, str) and not value:
        problems.append(f"{where}: empty")
    return problems


def strings(value: Any) -> tuple[Any, list[str]]:
    """Texts stripped; required ones must not be blank. The whole review of Compare and Judge."""
    value = _strip(value)
    return value, _blank_required(value)


def iut(value: Any) -> tuple[Any, list[str]]:
    value, problems = strings(value)
    # Relationships exist only between two or more objects. With fewer, the phrases
    # cannot be about the listed objects, so they are dropped, not repaired.
    if len(value["objects"]) < 2:
        value["relationships"] = []
    return value, problems


def prompt(token_budget: int, counter: TokenCounter) -> Review:
    """WritePrompt and Revise: the prompt within the token budget."""

    def review(value: Any) -> tuple[Any, list[str]]:
        value, problems = strings(value)
        if (problem := budget_problem("prompt", value["prompt"], token_budget, counter)) is not None:
            problems.append(problem)
        return value, problems

    return review


def variants(token_budget: int, counter: TokenCounter) -> Review:
    """Variants: every prompt within the budget, and no two the same (case and spacing ignored)."""

    def review(value: Any) -> tuple[Any, list[str]]:
        value, problems = strings(value)
        seen: dict[str, int] = {}
        for index, text in enumerate(value["prompts"]):
            normal = " ".join(text.casefold().split())
            if normal in seen:
                problems.append(f"prompts[{index}]: repeats prompts[{seen[normal]}]; every variant must differ")
            seen.setdefault(normal, index)
            if (problem := budget_problem(f"prompts[{index}]", text, token_budget, counter)) is not None:
                problems.append(problem)
        return value, problems

    return review
