"""The describer's prompt templates.

TEMPLATE_VERSION names this set of templates. It is reported by Info and is part of
every cache key; it ends with a digest of the template texts themselves, so an edited
template can never be served from answers cached under the old wording. Bump the
number when the meaning changes; the digest follows any edit on its own.
"""

# ruff: noqa: E501 - the prompt texts keep one paragraph per line, as the model sees them.

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from PIL import Image

from regen.describer.answers import Difference, ImageUnderstandingTree, compose_draft
from regen.describer.backends.base import Message
from regen.describer.budget import SPECIAL_TOKENS
from regen.describer.schemas import MAX_OBJECTS, AnswerBounds

# 2: the judge's format example names no scores (a copied example was a valid 3/3).
TEMPLATE_NUMBER = 2

SYSTEM = (
    "You are the vision-language model of an image-regeneration benchmark. You look at images closely, "
    "describe them precisely, and write prompts for text-to-image models. Always answer with one JSON "
    "object in exactly the requested format and nothing else: no prose, no code fences. Inside text "
    "values, never use double quotes, backslashes or line breaks."
)

UNDERSTAND = """Build the Image Understanding Tree of this image, as JSON:
- global_description: one sentence that names the main subject first, then the key elements, the style and the mood (at most {text} characters).
- global_features: style, lighting, color_palette and composition, a short phrase each.
- objects: the {max_objects} or fewer most important things in the image, most important first. Each has a name, a type (person, animal or object) and attributes: color, material, position, texture, and also posture, expression and clothing for a person; species, posture and expression for an animal; function and state for an object. Use an empty string for an attribute that does not apply.
- relationships: up to {relationships} short phrases such as "woman holds umbrella" or "cup left of laptop", only when there are two or more objects; otherwise an empty list.
Names, features, attributes and relationships have at most {field} characters each.
Format: {{"global_description": "...", "global_features": {{"style": "...", "lighting": "...", "color_palette": "...", "composition": "..."}}, "objects": [{{"name": "...", "type": "person", "attributes": {{"color": "...", "material": "...", "position": "...", "texture": "...", "posture": "...", "expression": "...", "clothing": "..."}}}}], "relationships": ["..."]}}"""

WRITE_PROMPT = """This is the Image Understanding Tree of a reference image:
{iut}
Composed into a draft:
{draft}
Rewrite the draft as one prompt for a text-to-image model that should regenerate the reference image: comma-separated descriptors, most important first (the main subject, then the key objects with their attributes and relationships, then the setting, style, lighting, colours and composition). {budget}
Format: {{"prompt": "..."}}"""

VARIANTS = """Write {n} different prompts for a text-to-image model that all keep the meaning of this prompt:
{prompt}
Vary the wording, word order and emphasis, but keep every subject, attribute, relationship, the style and the composition. The {n} prompts must differ from each other. {budget}
Format: {{"prompts": [{slots}]}} with exactly {n} prompts."""

COMPARE = """The first image is the reference. The second image was generated from this prompt:
{prompt}
List the concrete differences between the two images that matter for regenerating the reference, most important first, at most {differences}: style (medium, rendering, mood), composition (framing, viewpoint, layout, positions, sizes) and content (missing, extra or wrong objects, attributes, colours, count). Describe each as what the reference has that the generated image lacks, in at most {field} characters.
Format: {{"differences": [{{"aspect": "style", "description": "..."}}]}} with aspect one of style, composition, content."""

COMPARE_NO_PROMPT = "(the prompt was not given)"

REVISE = """This prompt for a text-to-image model was meant to regenerate a reference image:
{prompt}
These are the differences between the reference and the image it produced:
{differences}
Revise the prompt so that the next image is closer to the reference: fix every difference, keep what was already right, and keep the form: comma-separated descriptors, most important first. {budget}
Format: {{"prompt": "..."}}"""

JUDGE = """The first image is the reference; the second is an attempt to regenerate it. Rate the second image:
- content_consistency, 1 to 5: how well it matches the reference in subjects, attributes, layout and style. 5: the same scene with only minor deviations; 4: the same scene with a few visible differences; 3: the main subject matches but much else differs; 2: only loosely related; 1: unrelated.
- perceptual_quality, 1 to 5, of the second image alone: 5: clean and coherent, no artefacts; 4: small flaws; 3: visible artefacts or distortions; 2: severe artefacts; 1: broken or unrecognisable.
- rationale: one or two sentences that justify both scores, written before them (at most {text} characters).
Format: {{"rationale": "...", "content_consistency": <integer 1 to 5>, "perceptual_quality": <integer 1 to 5>}}"""

REPAIR = """Your answer could not be used:
{problems}
Answer again with only the corrected JSON object, in the same format."""

BUDGET = (
    "Keep the prompt within {budget} tokens of the text-to-image model's tokenizer (about {words} words, "
    "commas counted as tokens), at most {chars} characters."
)
NO_BUDGET = "Keep the prompt under {chars} characters."


# What each task's model reads besides its inputs: an answer that copies a phrase of it
# is the template echoed, not an answer (review.non_answers).
INSTRUCTIONS: dict[str, str] = {
    "understand": UNDERSTAND,
    "write_prompt": WRITE_PROMPT + BUDGET + NO_BUDGET,
    "variants": VARIANTS + BUDGET + NO_BUDGET,
    "compare": COMPARE + COMPARE_NO_PROMPT,
    "revise": REVISE + BUDGET + NO_BUDGET,
    "judge": JUDGE,
}


def instructions(task: str) -> str:
    """The fixed text the model reads for `task`: the system message, the task's template
    and the repair request."""
    return "\n".join((SYSTEM, INSTRUCTIONS[task], REPAIR))


def _digest() -> str:
    texts = [
        SYSTEM,
        UNDERSTAND,
        WRITE_PROMPT,
        VARIANTS,
        COMPARE,
        COMPARE_NO_PROMPT,
        REVISE,
        JUDGE,
        REPAIR,
        BUDGET,
        NO_BUDGET,
    ]
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:8]


TEMPLATE_VERSION = f"{TEMPLATE_NUMBER}+{_digest()}"


def _system() -> Message:
    return Message("system", (SYSTEM,))


def budget_sentence(token_budget: int, bounds: AnswerBounds) -> str:
    chars = bounds.prompt_chars(token_budget)
    if token_budget <= 0:
        return NO_BUDGET.format(chars=chars)
    # Comma-separated descriptors run at roughly 1.5 tokens a word, commas included.
    words = max(1, int((token_budget - SPECIAL_TOKENS) / 1.5))
    return BUDGET.format(budget=token_budget, words=words, chars=chars)


def understand(image: Image.Image, bounds: AnswerBounds) -> tuple[Message, ...]:
    text = UNDERSTAND.format(
        text=bounds.text_chars,
        field=bounds.field_chars,
        max_objects=MAX_OBJECTS,
        relationships=bounds.relationships,
    )
    return (_system(), Message("user", (image, text)))


def write_prompt(iut: ImageUnderstandingTree, token_budget: int, bounds: AnswerBounds) -> tuple[Message, ...]:
    text = WRITE_PROMPT.format(
        iut=json.dumps(iut.to_json(), ensure_ascii=False),
        draft=compose_draft(iut),
        budget=budget_sentence(token_budget, bounds),
    )
    return (_system(), Message("user", (text,)))


def variants(prompt: str, n: int, token_budget: int, bounds: AnswerBounds) -> tuple[Message, ...]:
    text = VARIANTS.format(
        n=n, prompt=prompt, budget=budget_sentence(token_budget, bounds), slots=", ".join(['"..."'] * n)
    )
    return (_system(), Message("user", (text,)))


def compare(reference: Image.Image, candidate: Image.Image, prompt: str, bounds: AnswerBounds) -> tuple[Message, ...]:
    text = COMPARE.format(prompt=prompt or COMPARE_NO_PROMPT, differences=bounds.differences, field=bounds.field_chars)
    return (_system(), Message("user", (reference, candidate, text)))


def revise(
    prompt: str, differences: Sequence[Difference], token_budget: int, bounds: AnswerBounds
) -> tuple[Message, ...]:
    listed = "\n".join(f"- {d.aspect}: {d.description}" for d in differences)
    text = REVISE.format(prompt=prompt, differences=listed, budget=budget_sentence(token_budget, bounds))
    return (_system(), Message("user", (text,)))


def judge(reference: Image.Image, candidate: Image.Image, bounds: AnswerBounds) -> tuple[Message, ...]:
    return (_system(), Message("user", (reference, candidate, JUDGE.format(text=bounds.text_chars))))


def repair(messages: tuple[Message, ...], raw: str, problems: Sequence[str]) -> tuple[Message, ...]:
    """The original chat, the unusable answer, and what was wrong with it."""
    listed = "\n".join(f"- {p}" for p in problems[:12])
    return (*messages, Message("assistant", (raw,)), Message("user", (REPAIR.format(problems=listed),)))
