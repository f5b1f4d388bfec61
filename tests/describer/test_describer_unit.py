"""Describer core pieces without a model: schemas and their size bounds, lenient parsing,
the token estimate, the repair path, the cache and in-flight sharing (a scripted backend
stands in for the model; the server tests in test_describer.py use the real one)."""

from __future__ import annotations

import asyncio
import io
import json
import re

import pytest
from PIL import Image

from regen.common.batching import BatchStats
from regen.common.errors import BadModelOutput, InvalidInput
from regen.describer import review, schemas, templates
from regen.describer.answers import Difference, GlobalFeatures, ImageUnderstandingTree, SceneObject, compose_draft
from regen.describer.backends.base import BackendIdentity, Completion, ModelCall
from regen.describer.budget import EstimatedTokens, budget_problem
from regen.describer.cache import AnswerCache
from regen.describer.core import CoreOptions, DescriberCore

BOUNDS = schemas.AnswerBounds(text_chars=40, field_chars=12, relationships=3, differences=2)


class ScriptedBackend:
    """Answers from a list, in order (the last one repeats); records every call."""

    def __init__(self, *answers: str, delay_s: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls: list[ModelCall] = []
        self.delay_s = delay_s
        self.identity = BackendIdentity("scripted", "scripted-model", "r1", "cpu", "float32")
        self._stats = BatchStats()

    async def complete(self, call: ModelCall) -> Completion:
        self.calls.append(call)
        self._stats.items += 1
        await asyncio.sleep(self.delay_s)
        text = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return Completion(text=text, output_tokens=len(text) // 4)

    def stats(self) -> BatchStats:
        return self._stats

    async def aclose(self) -> None:
        return None


def make_core(backend: ScriptedBackend, cache: AnswerCache | None = None, **options) -> DescriberCore:
    return DescriberCore(backend, CoreOptions(bounds=BOUNDS, **options), cache=cache)


def png(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def iut_json(objects: int = 2, relationships: int = 1) -> dict:
    people = [
        {
            "name": f"woman {i}",
            "type": "person",
            "attributes": {
                "color": "red",
                "material": "",
                "position": "left",
                "texture": "",
                "posture": "standing",
                "expression": "smiling",
                "clothing": "coat",
            },
        }
        for i in range(objects)
    ]
    return {
        "global_description": "A woman in a red coat on a street, calm",
        "global_features": {"style": "photo", "lighting": "soft", "color_palette": "red", "composition": "centered"},
        "objects": people,
        "relationships": ["woman by car"] * relationships,
    }


# ---------------------------------------------------------------- schemas


def longest_value(schema: dict):
    """The longest value a schema allows (every array full, every string at its bound)."""
    if "anyOf" in schema:
        return max((longest_value(s) for s in schema["anyOf"]), key=lambda v: len(json.dumps(v)))
    if "enum" in schema:
        return max(schema["enum"], key=len)
    kind = schema["type"]
    if kind == "object":
        return {k: longest_value(v) for k, v in schema["properties"].items()}
    if kind == "array":
        return [longest_value(schema["items"]) for _ in range(schema["maxItems"])]
    if kind == "integer":
        return schema["maximum"]
    return "x" * schemas._pattern_max_chars(schema["pattern"])


@pytest.mark.parametrize(
    "schema",
    [
        schemas.iut_schema(BOUNDS),
        schemas.prompt_schema(BOUNDS, 77),
        schemas.variants_schema(BOUNDS, 3, 0),
        schemas.compare_schema(BOUNDS),
        schemas.judge_schema(BOUNDS),
    ],
    ids=["iut", "prompt", "variants", "compare", "judge"],
)
def test_size_bound_is_exact_for_the_longest_valid_answer(schema):
    value = longest_value(schema)
    assert schemas.schema_problems(schema, value) == []
    assert len(json.dumps(value, separators=(",", ":")).encode()) == schemas.max_answer_bytes(schema)


def test_string_fields_reject_control_characters_quotes_and_non_ascii():
    schema = schemas.prompt_schema(BOUNDS, 0)
    for bad in ["a\nb", "tab\there", 'say "hi"', "back\\slash", "café", " leading space", "", "x" * 41]:
        problems = schemas.schema_problems(schema, {"prompt": bad})
        assert problems and problems[0].startswith("prompt:"), bad
    assert schemas.schema_problems(schema, {"prompt": "red coat, street, photo"}) == []
    # Python's `$` matches before a final newline; the separate control-character check
    # catches what the pattern lets through.
    assert schemas.schema_problems(schema, {"prompt": "ends with newline\n"})


def test_texts_start_with_a_letter_and_optional_ones_may_be_empty():
    required, optional = schemas.text(12), schemas.text(12, required=False)
    for bad in ["...", "-", "42", "", " a", "<one sentence>", "9 cats"]:
        assert schemas.schema_problems(required, bad), bad
    for bad in ["...", "-", "42", " a"]:
        assert schemas.schema_problems(optional, bad), bad
    for good in ["a", "Red coat", "x" * 12]:
        assert schemas.schema_problems(required, good) == [] and schemas.schema_problems(optional, good) == []
    assert schemas.schema_problems(optional, "") == []
    assert schemas.max_answer_bytes(optional) == schemas.max_answer_bytes(required) == 14


def test_integers_are_json_integers():
    """jsonschema's draft counts 4.0 as an integer; a score must be 4, so what is cached
    always converts to int32."""
    schema = schemas.judge_schema(BOUNDS)
    good = {"rationale": "close match", "content_consistency": 4, "perceptual_quality": 5}
    assert schemas.schema_problems(schema, good) == []
    for bad in (4.0, True, "4", 4.5):
        problems = schemas.schema_problems(schema, good | {"content_consistency": bad})
        assert problems and problems[0].startswith("content_consistency:"), bad


def test_a_key_given_twice_is_a_problem_not_the_last_value():
    value, problem = schemas.parse_json_answer('{"a": {"b": 7, "b": 4}}')
    assert value is None and problem == "the key 'b' appears twice in one object; give every key once"
    assert schemas.loads_strict('{"a": 1, "b": {"a": 2}}') == {"a": 1, "b": {"a": 2}}


def test_non_answers_are_named_with_what_to_do():
    instructions = templates.instructions("judge")
    assert review.non_answers({"rationale": "The apple is darker and smaller."}, instructions) == []
    cases = {
        "N/A": "rationale: 'N/A' is a placeholder, not an answer; write what the image shows",
        "string": "is a placeholder",
        "Lorem ipsum dolor": "is a placeholder",
        "Rationale.": "repeats the key's name",
        "The same scene with only minor deviations.": "copies the instructions",
    }
    for text, words in cases.items():
        (problem,) = review.non_answers({"rationale": text}, instructions)
        assert words in problem, (text, problem)
    # An attribute that does not apply is an empty string, and the problem says so.
    iut = iut_json(objects=1)
    iut["objects"][0]["attributes"]["material"] = "none"
    (problem,) = review.non_answers(iut, templates.instructions("understand"))
    assert problem.startswith("objects[0].attributes.material: 'none' is a placeholder")
    assert problem.endswith("or an empty string if it does not apply")
    # Short phrases that the instructions also use are ordinary answers.
    assert review.non_answers({"style": "soft light", "lighting": "photo"}, templates.instructions("understand")) == []


def test_template_examples_hold_no_concrete_values():
    """A reply that copies a format example must fail validation: the examples' texts are
    placeholders, and the judge's scores are not numbers (a copied 3/3 was once a score)."""
    for task in templates.INSTRUCTIONS:
        text = templates.instructions(task)
        formats = [line for line in text.splitlines() if line.startswith("Format:")]
        assert formats, task
        for line in formats:
            assert not re.search(r'":\s*-?\d', line), line
    assert "<integer 1 to 5>" in templates.JUDGE
    assert templates.TEMPLATE_NUMBER >= 2


def test_iut_schema_allows_only_the_objects_own_attributes():
    schema = schemas.iut_schema(BOUNDS)
    value = iut_json()
    assert schemas.schema_problems(schema, value) == []
    value["objects"][0]["attributes"]["species"] = "cat"
    assert any(p.startswith("objects[0]") for p in schemas.schema_problems(schema, value))
    too_many = iut_json(objects=6)
    assert any("maxItems" in p for p in schemas.schema_problems(schema, too_many))


def test_every_string_pattern_compiles_in_xgrammar():
    xgr = pytest.importorskip("xgrammar")
    for schema in (schemas.iut_schema(BOUNDS), schemas.judge_schema(BOUNDS), schemas.compare_schema(BOUNDS)):
        grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
        assert "root" in str(grammar)


def test_xgrammar_allows_exactly_what_the_patterns_allow():
    """Constrained decoding must not produce what validation refuses (xgrammar once read
    "(x)?" as any string, and the tiny model answered " enemy" for an attribute)."""
    xgr = pytest.importorskip("xgrammar")
    accepts = getattr(pytest.importorskip("xgrammar.testing"), "_is_grammar_accept_string", None)
    if accepts is None:
        pytest.skip("this xgrammar has no testing._is_grammar_accept_string")
    for required in (True, False):
        schema = schemas.text(8, required=required)
        grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
        for value in ["", " enemy", "...", "4 cats", "a", "Red coat", "abcdefgh", "abcdefghi", "a\tb"]:
            allowed = schemas.schema_problems(schema, value) == []
            assert accepts(grammar, json.dumps(value)) == allowed, (required, value)


def test_parse_json_answer_is_lenient_about_wrapping_only():
    value, problem = schemas.parse_json_answer('Sure! ```json\n{"prompt": "a cat"}\n```')
    assert problem is None and value == {"prompt": "a cat"}
    value, problem = schemas.parse_json_answer('```json\n{"prompt": "a\x01cat"}\n```')
    assert problem is None and value == {"prompt": "a\x01cat"}
    assert schemas.parse_json_answer("no json here")[1] == "the answer contains no JSON object"
    assert "not valid JSON" in schemas.parse_json_answer('{"prompt": "unterminated}')[1]


# ---------------------------------------------------------------- budget


def test_token_estimate_counts_words_digits_punctuation_and_specials():
    counter = EstimatedTokens()
    assert counter.count("") == 2
    assert counter.count("a red cat") == 5
    assert counter.count("cat, 42") == 2 + 1 + 1 + 2
    assert counter.count("photorealistic") == 2 + 2  # 14 letters: two tokens
    assert budget_problem("prompt", "a red cat", 5, counter) is None
    problem = budget_problem("prompt", "a red cat on a mat", 5, counter)
    assert problem is not None and "over the budget of 5" in problem and "shorten" in problem
    assert budget_problem("prompt", "x " * 500, 0, counter) is None


# ---------------------------------------------------------------- core


def test_understand_validates_and_drops_relationships_without_two_objects():
    backend = ScriptedBackend(json.dumps(iut_json(objects=1, relationships=2)))
    result = asyncio.run(make_core(backend).understand(png()))
    assert result.answer.relationships == ()
    assert len(result.answer.objects) == 1
    assert result.call.attempts == 1 and not result.call.cached
    call = backend.calls[0]
    assert call.temperature == 0 and len(call.images) == 1
    assert call.max_new_tokens == schemas.max_answer_bytes(schemas.iut_schema(BOUNDS)) + 1


def test_invalid_answer_is_repaired_with_the_problems_listed():
    backend = ScriptedBackend('{"prompt": ""}', '{"prompt": "red coat, street"}')
    result = asyncio.run(make_core(backend).revise("a coat", [Difference("content", "no street")], 0))
    assert result.answer == "red coat, street"
    assert result.call.attempts == 2
    repair = backend.calls[1].messages
    assert repair[-2].role == "assistant" and repair[-2].text == '{"prompt": ""}'
    assert "prompt: must be a non-empty text" in repair[-1].text


def test_answer_that_stays_invalid_fails_with_the_raw_text():
    backend = ScriptedBackend("the model rambles instead of answering")
    with pytest.raises(BadModelOutput) as info:
        asyncio.run(make_core(backend, max_repairs=2).judge(png(), png((0, 0, 0))))
    assert len(backend.calls) == 3
    assert info.value.raw == "the model rambles instead of answering"
    assert "no JSON object" in str(info.value) and "raw output" in str(info.value)


def test_over_budget_prompt_goes_through_repair_then_fails_clearly():
    long_prompt = json.dumps({"prompt": "red coat, busy street, dusk, photo"})
    backend = ScriptedBackend(long_prompt)
    iut = ImageUnderstandingTree.from_json(iut_json())
    with pytest.raises(BadModelOutput) as info:
        asyncio.run(make_core(backend, max_repairs=1).write_prompt(iut, token_budget=8))
    assert "over the budget of 8" in str(info.value)
    assert "over the budget of 8" in backend.calls[1].messages[-1].text


def test_variants_must_be_exactly_n_distinct_and_sampled_with_the_seed():
    duplicate = json.dumps({"prompts": ["a cat", "A  cat", "a dog"]})
    good = json.dumps({"prompts": ["a cat", "a kitten", "a small cat"]})
    backend = ScriptedBackend(duplicate, good)
    result = asyncio.run(make_core(backend).variants("a cat", 3, 0, seed=7))
    assert result.answer == ["a cat", "a kitten", "a small cat"]
    assert "prompts[1]: repeats prompts[0]" in backend.calls[1].messages[-1].text
    assert [c.seed for c in backend.calls] == [7, 8]
    assert all(c.temperature == 0.8 for c in backend.calls)
    assert backend.calls[0].schema["properties"]["prompts"]["minItems"] == 3


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e: e.understand(b"not an image"), "image_png"),
        (lambda e: e.understand(png(size=(4, 4))), "image_png"),
        (lambda e: e.understand(png(size=(600, 8))), "image_png"),
        (lambda e: e.variants("  ", 3, 0, 0), "prompt"),
        (lambda e: e.variants("a cat", 0, 0, 0), "n"),
        (lambda e: e.variants("a cat", 9, 0, 0), "n"),
        (lambda e: e.variants("a cat", 2, 3, 0), "token_budget"),
        (lambda e: e.variants("x" * 4001, 2, 0, 0), "prompt"),
        (lambda e: e.revise("a cat", [], 0), "differences"),
        (lambda e: e.revise("a cat", [Difference("mood", "darker")], 0), "differences[0].aspect"),
        (lambda e: e.compare(png(), b"", "a cat"), "candidate_png"),
    ],
)
def test_bad_input_is_refused_before_any_model_call(call, field):
    backend = ScriptedBackend("{}")
    with pytest.raises(InvalidInput) as info:
        asyncio.run(call(make_core(backend)))
    assert str(info.value).startswith(field + ":")
    assert backend.calls == []


def test_write_prompt_refuses_a_malformed_iut():
    base = ImageUnderstandingTree.from_json(iut_json())
    bad_objects = ImageUnderstandingTree(
        base.global_description, base.global_features, tuple(base.objects[:1]) * 6, base.relationships
    )
    wrong_attribute = ImageUnderstandingTree.from_json(iut_json())
    cat = SceneObject("cat", "animal", type(base.objects[0].attributes)(clothing="scarf"))
    wrong_attribute = ImageUnderstandingTree(base.global_description, base.global_features, (cat,), ())
    cases = [
        (ImageUnderstandingTree("", GlobalFeatures(), base.objects), "iut.global_description"),
        (bad_objects, "iut.objects"),
        (wrong_attribute, "iut.objects[0].attributes.clothing"),
    ]
    for iut, field in cases:
        with pytest.raises(InvalidInput, match=re.escape(field) + ":"):
            asyncio.run(make_core(ScriptedBackend("{}")).write_prompt(iut, 77))


def test_compose_draft_keeps_the_most_important_first():
    draft = compose_draft(ImageUnderstandingTree.from_json(iut_json(objects=1, relationships=0)))
    assert draft.startswith("A woman in a red coat on a street, calm, woman 0 (red, left, standing")
    assert draft.endswith("style: photo, lighting: soft, colors: red, composition: centered")


# ---------------------------------------------------------------- cache


def test_cache_persists_across_cores_and_keys_follow_every_input(tmp_path):
    answer = json.dumps({"rationale": "close match", "content_consistency": 4, "perceptual_quality": 5})
    first = ScriptedBackend(answer)
    result = asyncio.run(make_core(first, AnswerCache(tmp_path)).judge(png(), png((0, 0, 0))))
    assert not result.call.cached and len(first.calls) == 1
    entry = tmp_path / result.call.cache_key[:2] / f"{result.call.cache_key}.json"
    assert json.loads(entry.read_text())["answer"]["content_consistency"] == 4

    second = ScriptedBackend("unused")
    again = asyncio.run(make_core(second, AnswerCache(tmp_path)).judge(png(), png((0, 0, 0))))
    assert again.call.cached and again.call.attempts == 0 and second.calls == []
    assert again.answer == result.answer and again.call.cache_key == result.call.cache_key

    # Same pixels in another encoding share the key; other inputs or settings do not.
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="BMP")
    same_pixels = asyncio.run(make_core(second, AnswerCache(tmp_path)).judge(buf.getvalue(), png((0, 0, 0))))
    assert same_pixels.call.cached
    other = ScriptedBackend(answer)
    keys = {
        asyncio.run(make_core(other, AnswerCache(tmp_path)).judge(png((1, 2, 3)), png((0, 0, 0)))).call.cache_key,
        asyncio.run(make_core(other, AnswerCache(tmp_path), max_repairs=5).judge(png(), png((0, 0, 0)))).call.cache_key,
        result.call.cache_key,
    }
    assert len(keys) == 3


def test_a_greedy_judge_ignores_the_seed_and_a_sampling_one_draws_with_it(tmp_path):
    answer = json.dumps({"rationale": "close match", "content_consistency": 4, "perceptual_quality": 5})
    greedy = ScriptedBackend(answer)
    core = make_core(greedy, AnswerCache(tmp_path / "greedy"))
    one, other = (asyncio.run(core.judge(png(), png((0, 0, 0)), seed=seed)) for seed in (1, 2))
    assert other.call.cached and other.call.cache_key == one.call.cache_key and len(greedy.calls) == 1
    assert greedy.calls[0].temperature == 0 and greedy.calls[0].seed == one.call.seed

    sampled = ScriptedBackend(answer)
    core = make_core(sampled, AnswerCache(tmp_path / "sampled"), judge_temperature=0.7)
    one, again, other = (asyncio.run(core.judge(png(), png((0, 0, 0)), seed=seed)) for seed in (1, 1, 2))
    assert again.call.cached and not other.call.cached and other.call.cache_key != one.call.cache_key
    assert [(c.temperature, c.seed) for c in sampled.calls] == [(0.7, 1), (0.7, 2)]


def test_variants_key_depends_on_the_seed(tmp_path):
    backend = ScriptedBackend(json.dumps({"prompts": ["a cat", "a kitten"]}))
    cached_core = make_core(backend, AnswerCache(tmp_path))
    one = asyncio.run(cached_core.variants("a cat", 2, 0, seed=1))
    same = asyncio.run(cached_core.variants("a cat", 2, 0, seed=1))
    other = asyncio.run(cached_core.variants("a cat", 2, 0, seed=2))
    assert same.call.cached and same.call.cache_key == one.call.cache_key
    assert not other.call.cached and other.call.cache_key != one.call.cache_key


def test_corrupt_cache_entry_is_a_miss_and_is_rewritten(tmp_path):
    answer = json.dumps({"prompt": "red coat"})
    backend = ScriptedBackend(answer)
    first = asyncio.run(make_core(backend, AnswerCache(tmp_path)).revise("coat", [Difference("style", "photo")], 0))
    path = tmp_path / first.call.cache_key[:2] / f"{first.call.cache_key}.json"
    path.write_text("{ truncated")
    again = asyncio.run(make_core(backend, AnswerCache(tmp_path)).revise("coat", [Difference("style", "photo")], 0))
    assert not again.call.cached and json.loads(path.read_text())["answer"] == {"prompt": "red coat"}


def test_identical_concurrent_requests_share_one_model_call():
    backend = ScriptedBackend(json.dumps({"prompt": "red coat"}), delay_s=0.05)
    describer = make_core(backend)

    async def both():
        return await asyncio.gather(
            describer.revise("coat", [Difference("style", "photo")], 0),
            describer.revise("coat", [Difference("style", "photo")], 0),
        )

    first, second = asyncio.run(both())
    assert len(backend.calls) == 1
    assert first.answer == second.answer == "red coat"
    assert sorted([first.call.attempts, second.call.attempts]) == [0, 1]


def test_template_version_names_number_and_text_digest():
    assert re.fullmatch(r"\d+\+[0-9a-f]{8}", templates.TEMPLATE_VERSION)


def test_cache_hits_misses_and_repairs_are_counted_in_the_metrics(tmp_path):
    from prometheus_client import REGISTRY

    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (count("regen_describer_cache_total", result="hit"), count("regen_describer_cache_total", result="miss"))
    repairs = count("regen_describer_repairs_total", task="revise")
    backend = ScriptedBackend('{"prompt": ""}', '{"prompt": "red coat, street"}')
    core = make_core(backend, AnswerCache(tmp_path))
    for _ in range(2):
        asyncio.run(core.revise("a coat", [Difference("content", "no street")], 0))
    after = (count("regen_describer_cache_total", result="hit"), count("regen_describer_cache_total", result="miss"))
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
    assert count("regen_describer_repairs_total", task="revise") - repairs == 1
