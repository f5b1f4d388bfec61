"""What any regen.v1.Generator server must do, checked through plain gRPC.

Each `check_<what>(channel)` raises AssertionError with a reason when the server behind
`channel` does not conform. They assume only the contract (proto/regen/v1/generator.proto
and docs/adding-a-generator.md), never this repository's implementation: sizes, limits and
defaults come from the server's own Info. `tests/contract/test_service_contracts.py` runs them against
the tiny service, or against any server named by REGEN_TEST_GENERATOR_ADDRESS.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable

import grpc
from PIL import Image

from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

TEXTS = [
    "a red fox sleeping in fresh snow, soft morning light, watercolor",
    "a vintage blue car parked on a cobblestone street, film photo",
    "a tall lighthouse on a rocky cliff at sunset, oil painting",
    "a cup of coffee",
    "a dog on a beach",
]
INT32_MAX = 2**31 - 1


def _stub(channel: grpc.Channel) -> generator_pb2_grpc.GeneratorStub:
    return generator_pb2_grpc.GeneratorStub(channel)


def _info(channel: grpc.Channel) -> generator_pb2.GeneratorInfo:
    return _stub(channel).Info(common_pb2.InfoRequest(), timeout=30)


def _prompt(text: str, seed: int, negative: str = "") -> generator_pb2.PromptSpec:
    return generator_pb2.PromptSpec(text=text, seed=seed, negative_prompt=negative)


def _generate(channel: grpc.Channel, prompts: list, *, timeout: float = 300, **fields) -> list:
    """Images in arrival order."""
    request = generator_pb2.GenerateRequest(prompts=prompts, **fields)
    return list(_stub(channel).Generate(request, timeout=timeout))


def _png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG", f"images must be PNG, got {image.format}"
        image.load()
        return image.size


def check_info_is_sane(channel: grpc.Channel) -> None:
    """Info names the model and reports usable defaults and limits."""
    info = _info(channel)
    assert info.model.model_id, "Info.model.model_id is empty"
    assert info.model.revision, "Info.model.revision is empty (pin or hash the weights)"
    assert info.prompt_token_budget >= 0, f"prompt_token_budget {info.prompt_token_budget} < 0"
    assert info.max_batch >= 1, f"max_batch {info.max_batch} < 1"
    assert info.size_multiple >= 1, f"size_multiple {info.size_multiple} < 1"
    for name in ("default_width", "default_height"):
        value = getattr(info, name)
        assert value > 0 and value % info.size_multiple == 0, (
            f"{name} {value} is not a positive multiple of size_multiple {info.size_multiple}"
        )
    assert info.default_steps >= 0, f"default_steps {info.default_steps} < 0"
    assert math.isfinite(info.default_guidance_scale) and info.default_guidance_scale >= 0, (
        f"default_guidance_scale {info.default_guidance_scale} is not a finite value >= 0"
    )
    assert info.steps_run >= 0, f"steps_run {info.steps_run} < 0"


def check_each_prompt_gets_one_image_with_its_index(channel: grpc.Channel) -> None:
    """Images stream back once per index, at the default size, with their seeds; distinct
    prompts and seeds give distinct images."""
    info = _info(channel)
    texts = TEXTS[: info.max_batch]
    images = _generate(channel, [_prompt(text, seed=10 + i) for i, text in enumerate(texts)])
    indexes = sorted(image.index for image in images)
    assert indexes == list(range(len(texts))), f"indexes {indexes}, expected each of 0..{len(texts) - 1} once"
    for image in images:
        assert not image.refused, f"prompts[{image.index}] was refused: {image.refusal_reason}"
        assert image.seed == 10 + image.index, f"prompts[{image.index}]: seed {image.seed}, sent {10 + image.index}"
        size = (info.default_width, info.default_height)
        assert (image.width, image.height) == size, f"prompts[{image.index}]: {image.width}x{image.height}, not {size}"
        assert _png_size(image.png) == size, f"prompts[{image.index}]: the PNG is not {size}"
        assert image.elapsed_s > 0, f"prompts[{image.index}]: elapsed_s {image.elapsed_s}"
    assert len({image.png for image in images}) == len(texts), "distinct prompts gave identical images"


def check_explicit_size_steps_and_guidance_are_used(channel: grpc.Channel) -> None:
    """A request's width and height (multiples of size_multiple) are the image's."""
    info = _info(channel)
    width, height = 12 * info.size_multiple, 4 * info.size_multiple
    image = _generate(channel, [_prompt(TEXTS[1], 3)], width=width, height=height, steps=2, guidance_scale=1.0)[0]
    assert (image.width, image.height) == (width, height), f"asked {width}x{height}, got {image.width}x{image.height}"
    assert _png_size(image.png) == (width, height), f"the PNG is not {width}x{height}"


def bad_requests(info: generator_pb2.GeneratorInfo) -> list[tuple[str, list, dict, str]]:
    """(what, prompts, other fields, the field the error must name)."""
    fox = _prompt(TEXTS[0], 1)
    odd = info.size_multiple * 8 + 1  # not a multiple, unless every size is
    not_multiples = [("width", {"width": odd}), ("height", {"height": odd})] if info.size_multiple > 1 else []
    return [
        ("no prompts", [], {}, "prompts"),
        ("steps 0", [fox], {"steps": 0}, "steps"),
        *((f"{name} not a multiple", [fox], fields, name) for name, fields in not_multiples),
        ("a huge prompt", [fox, _prompt("x" * 100_000, 2)], {}, "prompts[1].text"),
        ("a negative seed", [fox, _prompt(TEXTS[1], -3)], {}, "prompts[1].seed"),
        ("more prompts than max_batch", [_prompt(TEXTS[0], i) for i in range(info.max_batch + 1)], {}, "prompts"),
        ("a blank prompt", [_prompt("   ", 1)], {}, "prompts[0].text"),
        ("a negative guidance", [fox], {"guidance_scale": -1.0}, "guidance_scale"),
        ("far too many steps", [fox], {"steps": INT32_MAX}, "steps"),
        ("a far too large width", [fox], {"width": info.size_multiple * (INT32_MAX // info.size_multiple)}, "width"),
    ]


def checkbad_requests_are_invalid_argument_naming_the_field(channel: grpc.Channel) -> None:
    """Malformed requests fail with INVALID_ARGUMENT, and the message names the field."""
    info = _info(channel)
    for what, prompts, fields, field in bad_requests(info):
        try:
            _generate(channel, prompts, timeout=60, **fields)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {err.code()}, not INVALID_ARGUMENT"
            assert field in (err.details() or ""), f"{what}: the message {err.details()!r} does not name {field}"
        else:
            raise AssertionError(f"{what}: accepted")


def check_a_missed_deadline_leaves_the_server_serving(channel: grpc.Channel) -> None:
    """A request whose deadline passes fails with DEADLINE_EXCEEDED, and the next one is served."""
    info = _info(channel)
    prompts = [_prompt(TEXTS[i % len(TEXTS)], 100 + i) for i in range(info.max_batch)]
    started = time.monotonic()
    try:
        _generate(channel, prompts, timeout=0.05)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"{err.code()}, not DEADLINE_EXCEEDED"
    else:
        raise AssertionError(f"{len(prompts)} images in {time.monotonic() - started:.3f} s, within a 0.05 s deadline")
    images = _generate(channel, [_prompt(TEXTS[1], 1)], timeout=300)
    assert len(images) == 1, f"{len(images)} images for one prompt after a missed deadline"


CHECKS: list[Callable[[grpc.Channel], None]] = [
    check_info_is_sane,
    check_each_prompt_gets_one_image_with_its_index,
    check_explicit_size_steps_and_guidance_are_used,
    checkbad_requests_are_invalid_argument_naming_the_field,
    check_a_missed_deadline_leaves_the_server_serving,
]
