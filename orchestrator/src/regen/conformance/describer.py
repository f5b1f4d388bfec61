"""What any regen.v1.Describer server must do, checked through plain gRPC.

Each `check_<what>(channel)` raises AssertionError with the reason when the server
behind `channel` breaks the contract. They assume nothing about the server's model,
backend or settings: only what regen.v1.Describer promises (status codes, fields named
in messages, limits every server shares, answers of the right shape). The images are
drawn here, so the checks need no files. `regen check describer ADDRESS` runs them, and
so do the tests, on the describer this repository ships.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import grpc
from PIL import Image, ImageDraw

from regen.common import describer_json
from regen.v1 import common_pb2, describer_pb2, describer_pb2_grpc

TOKEN_BUDGET = 77
MAX_OBJECTS = 5
SCORES = range(1, 6)


def picture(background: tuple[int, int, int], shape: tuple[int, int, int], size: tuple[int, int] = (96, 80)) -> bytes:
    """A PNG: a plain background with a disc and a bar, in the given colours."""
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 15, 60, 55), fill=shape)
    draw.rectangle((5, 65, 90, 75), fill=(90, 60, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


REFERENCE = picture((235, 225, 200), (200, 30, 30))
CANDIDATE = picture((40, 90, 160), (250, 200, 40))


def _stub(channel: grpc.Channel) -> describer_pb2_grpc.DescriberStub:
    return describer_pb2_grpc.DescriberStub(channel)


def assert_call_infos_valid(*calls: describer_pb2.CallInfo) -> None:
    """Each CallInfo states what its answer cost consistently (AssertionError naming the field)."""
    for call in calls:
        assert call.cache_key, f"CallInfo without a cache_key: {call}"
        counts = (call.attempts, call.repairs, call.input_tokens, call.output_tokens, call.elapsed_s)
        assert min(counts) >= 0, f"CallInfo out of range: {call}"
        assert call.attempts == 0 or not call.cached, f"a cached answer spent model calls: {call}"
        assert call.repairs < call.attempts or call.repairs == call.attempts == 0, (
            f"CallInfo.repairs {call.repairs} is not fewer than its attempts {call.attempts}"
        )
        assert call.served_model, f"CallInfo without served_model (the model that answered): {call}"
        _usage_is_described(call)


def _usage_is_described(call: describer_pb2.CallInfo) -> None:
    usage = call.usage
    counts = (usage.api_calls, usage.retries, usage.input_tokens, usage.output_tokens, usage.images)
    assert min(counts) >= 0, f"CallInfo.usage out of range: {usage}"
    assert not usage.HasField("cost_usd") or usage.cost_usd >= 0, f"CallInfo.usage.cost_usd negative: {usage}"
    assert usage.retries == 0, f"CallInfo.usage.retries is {usage.retries}: a describer never repeats an API call"
    assert usage.api_calls <= call.attempts, (
        f"CallInfo.usage.api_calls {usage.api_calls} exceeds the model calls made ({call.attempts})"
    )
    if call.cached:
        assert max(counts) == 0 and not usage.HasField("cost_usd"), f"a cached answer billed usage: {usage}"
    assert usage.input_tokens <= call.input_tokens and usage.output_tokens <= call.output_tokens, (
        f"CallInfo.usage bills more tokens than the answer took: {call}"
    )


def _prompt_is_clean(prompt: str, where: str) -> None:
    assert prompt and prompt == prompt.strip(), f"{where}: {prompt!r} is empty or has surrounding spaces"


def assert_iut_valid(iut: describer_pb2.ImageUnderstandingTree) -> None:
    """An IUT that every describer may return: 1 to 5 typed objects with only their own
    type's attributes, relationships only between two or more objects, and a lossless
    round trip through the one JSON form."""
    assert iut.global_description.strip(), "the IUT has no global_description"
    assert 1 <= len(iut.objects) <= MAX_OBJECTS, f"the IUT has {len(iut.objects)} objects; 1 to {MAX_OBJECTS} expected"
    as_json = describer_json.iut_to_json(iut)  # refuses an unspecified type
    for index, obj in enumerate(iut.objects):
        assert obj.name.strip(), f"objects[{index}] has no name"
        kind = as_json["objects"][index]["type"]
        given = [field.name for field, _value in obj.attributes.ListFields()]
        foreign = [name for name in given if name not in describer_json.attributes_of(kind)]
        assert not foreign, f"objects[{index}] ({kind}) has attributes of another type: {foreign}"
    if len(iut.objects) < 2:
        assert list(iut.relationships) == [], "relationships given with fewer than two objects"
    assert describer_json.iut_from_json(as_json) == iut, "the IUT does not survive its JSON form"


def check_info_names_the_model_and_templates(channel: grpc.Channel) -> None:
    info = _stub(channel).Info(common_pb2.InfoRequest())
    assert info.model.model_id, "Info.model.model_id is empty"
    assert info.model.backend, "Info.model.backend is empty"
    assert info.model.revision, "Info.model.revision is empty"
    assert info.template_version, "Info.template_version is empty"
    assert info.server.regen_version, "Info.server.regen_version is empty"


def check_every_task_answers_in_shape(channel: grpc.Channel) -> None:
    stub = _stub(channel)
    understood = stub.Understand(describer_pb2.UnderstandRequest(image_png=REFERENCE))
    assert_iut_valid(understood.iut)
    # An IUT the describer returned is accepted back as it is.
    first = stub.WritePrompt(describer_pb2.WritePromptRequest(iut=understood.iut, token_budget=TOKEN_BUDGET))
    _prompt_is_clean(first.prompt, "WritePrompt.prompt")

    variants = stub.Variants(describer_pb2.VariantsRequest(prompt=first.prompt, n=3, token_budget=TOKEN_BUDGET, seed=7))
    assert len(variants.prompts) == 3, f"Variants gave {len(variants.prompts)} prompts for n=3"
    assert len({" ".join(p.casefold().split()) for p in variants.prompts}) == 3, "Variants repeated a prompt"
    for index, prompt in enumerate(variants.prompts):
        _prompt_is_clean(prompt, f"Variants.prompts[{index}]")

    compared = stub.Compare(
        describer_pb2.CompareRequest(reference_png=REFERENCE, candidate_png=CANDIDATE, prompt=variants.prompts[0])
    )
    assert compared.differences, "Compare gave no differences"
    for index, difference in enumerate(compared.differences):
        assert difference.aspect in describer_json.ASPECTS, f"differences[{index}].aspect: {difference.aspect!r}"
        assert difference.description.strip(), f"differences[{index}].description is empty"

    revised = stub.Revise(
        describer_pb2.ReviseRequest(
            prompt=variants.prompts[0], differences=compared.differences, token_budget=TOKEN_BUDGET
        )
    )
    _prompt_is_clean(revised.prompt, "Revise.prompt")

    judged = stub.Judge(describer_pb2.JudgeRequest(reference_png=REFERENCE, candidate_png=CANDIDATE))
    assert judged.content_consistency in SCORES, f"content_consistency {judged.content_consistency} not in 1..5"
    assert judged.perceptual_quality in SCORES, f"perceptual_quality {judged.perceptual_quality} not in 1..5"
    assert judged.rationale.strip(), "Judge.rationale is empty"
    assert_call_infos_valid(understood.call, first.call, variants.call, compared.call, revised.call, judged.call)


def check_variants_follow_their_seed(channel: grpc.Channel) -> None:
    stub = _stub(channel)
    request = describer_pb2.VariantsRequest(prompt="red apple, wooden table", n=2, token_budget=0, seed=3)
    one, again = stub.Variants(request), stub.Variants(request)
    assert list(one.prompts) == list(again.prompts), "the same seed gave other variants"


def iut_message(**changes: object) -> describer_pb2.ImageUnderstandingTree:
    iut = describer_pb2.ImageUnderstandingTree(
        global_description="A red apple on a table",
        global_features=describer_pb2.GlobalFeatures(style="photo", lighting="soft"),
        objects=[
            describer_pb2.SceneObject(
                name="apple",
                type=describer_pb2.OBJECT_TYPE_OBJECT,
                attributes=describer_pb2.ObjectAttributes(color="red", state="fresh"),
            )
        ],
    )
    for key, value in changes.items():
        if key == "objects":
            assert isinstance(value, list)
            del iut.objects[:]
            iut.objects.extend(value)
        else:
            setattr(iut, key, value)
    return iut


def bad_requests() -> list[tuple[str, object, str]]:
    """(method, request, field) that every describer refuses with INVALID_ARGUMENT and a
    message starting with "<field>:"."""
    png = REFERENCE
    person_with_species = describer_pb2.SceneObject(
        name="man", type=describer_pb2.OBJECT_TYPE_PERSON, attributes=describer_pb2.ObjectAttributes(species="cat")
    )
    untyped = describer_pb2.SceneObject(name="thing")
    diff = describer_pb2.Difference(aspect="content", description="no apple")
    U, W, V = describer_pb2.UnderstandRequest, describer_pb2.WritePromptRequest, describer_pb2.VariantsRequest
    C, R, J = describer_pb2.CompareRequest, describer_pb2.ReviseRequest, describer_pb2.JudgeRequest
    return [
        ("Understand", U(image_png=b"definitely not an image"), "image_png"),
        ("Understand", U(image_png=b""), "image_png"),
        ("Understand", U(image_png=png[: len(png) // 2]), "image_png"),
        ("Understand", U(image_png=picture((0, 0, 0), (255, 255, 255), size=(4, 4))), "image_png"),
        ("Understand", U(image_png=picture((0, 0, 0), (255, 255, 255), size=(600, 8))), "image_png"),
        ("Compare", C(reference_png=png, candidate_png=b"\x89PNG\r\n\x1a\n broken"), "candidate_png"),
        ("Judge", J(reference_png=b"GIF89a", candidate_png=png), "reference_png"),
        ("Variants", V(prompt="", n=3), "prompt"),
        ("Variants", V(prompt="   ", n=3), "prompt"),
        ("Revise", R(prompt="", differences=[diff]), "prompt"),
        ("Revise", R(prompt="an apple", differences=[]), "differences"),
        (
            "Revise",
            R(prompt="an apple", differences=[describer_pb2.Difference(aspect="mood", description="x")]),
            "differences[0].aspect",
        ),
        ("Variants", V(prompt="an apple", n=0), "n"),
        ("Variants", V(prompt="an apple", n=(1 << 31) - 1), "n"),
        ("Variants", V(prompt="an apple", n=-2), "n"),
        ("Variants", V(prompt="an apple", n=2, token_budget=7), "token_budget"),
        ("Variants", V(prompt="an apple", n=2, token_budget=-5), "token_budget"),
        ("WritePrompt", W(iut=iut_message(global_description="")), "iut.global_description"),
        ("WritePrompt", W(iut=iut_message(objects=[untyped])), "iut.objects[0].type"),
        ("WritePrompt", W(iut=iut_message(objects=[person_with_species])), "iut.objects[0].attributes.species"),
        ("WritePrompt", W(iut=iut_message(objects=[iut_message().objects[0]] * (MAX_OBJECTS + 1))), "iut.objects"),
    ]


def assert_refused(stub: describer_pb2_grpc.DescriberStub, cases: list[tuple[str, object, str]]) -> None:
    for method, request, field in cases:
        call: Callable = getattr(stub, method)
        try:
            call(request)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{method} ({field}): {code} {details}"
            assert details.startswith(field + ":"), f"{method}: the message does not start with {field!r}: {details}"
        else:
            raise AssertionError(f"{method} accepted a bad {field}")


def check_bad_requests_are_refused_naming_the_field(channel: grpc.Channel) -> None:
    assert_refused(_stub(channel), bad_requests())


CHECKS: list[Callable[[grpc.Channel], None]] = [
    check_info_names_the_model_and_templates,
    check_every_task_answers_in_shape,
    check_variants_follow_their_seed,
    check_bad_requests_are_refused_naming_the_field,
]
