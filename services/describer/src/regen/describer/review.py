"""The review of a model's answer: parsed, checked against the task's schema, then by
the task's own rules. Each review takes a schema-valid value and returns it normalised
(texts stripped) with the list of problems; problems send the answer to repair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from regen.describer.budget import TokenCounter, budget_problem
from regen.describer.schemas import parse_json_answer, schema_problems

# Schema-valid JSON -> (normalised JSON, problems).
Review = Callable[[Any], tuple[Any, list[str]]]


def check_answer(schema: dict[str, Any], review: Review, raw: str) -> tuple[Any, list[str]]:
    """The model's raw text -> (normalised answer, problems); no problems: a valid answer."""
    value, problem = parse_json_answer(raw)
    if problem is not None:
        return None, [problem]
    problems = schema_problems(schema, value)
    if problems:
        return None, problems
    return review(value)


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
