"""What any regen.v1.Generator server must do, checked through plain gRPC.

Each `check_<what>(channel)` raises AssertionError with the reason when the server behind
`channel` does not conform, or `Skipped` when the check does not apply to it (a server
that says it is not seeded cannot be checked for determinism). The checks assume only
the contract (proto/regen/v1/generator.proto and docs/adding-a-generator.md): sizes,
limits and defaults come from the server's own Info. `regen check generator ADDRESS`
runs them; so do the tests, on every generator this repository ships.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from regen.conformance.outcome import Skipped
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

TEXTS = [
    "a red fox sleeping in fresh snow, soft morning light, watercolor",
    "a vintage blue car parked on a cobblestone street, film photo",
    "a tall lighthouse on a rocky cliff at sunset, oil painting",
    "a cup of coffee",
    "a dog on a beach",
]
INT32_MAX = 2**31 - 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def _one_image(channel: grpc.Channel, prompt: generator_pb2.PromptSpec, **fields) -> generator_pb2.GeneratedImage:
    images = _generate(channel, [prompt], **fields)
    indexes = [image.index for image in images]
    assert indexes == [0], f"indexes {indexes} for one prompt, expected [0]"
    return images[0]


def _png_size(png: bytes, where: str) -> tuple[int, int]:
    assert png.startswith(PNG_SIGNATURE), f"{where}: not a PNG (starts with {png[:8]!r})"
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return image.size


def _a_size(info: generator_pb2.GeneratorInfo) -> tuple[int, int]:
    """A size other than the default that the server says it renders."""
    default = (info.default_width, info.default_height)
    listed = [(s.width, s.height) for s in info.capabilities.sizes]
    if listed:
        others = [size for size in listed if size != default]
        return (others or listed)[0]
    return 12 * info.size_multiple, 4 * info.size_multiple


def check_health_is_serving_under_the_empty_name(channel: grpc.Channel) -> None:
    """grpc.health.v1 answers SERVING for the service name '' (the whole server)."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    except grpc.RpcError as err:
        raise AssertionError(
            f"health Check for '' answered {err.code().name}: {err.details()}; register grpc.health.v1 and "
            "set SERVING for the service name ''"
        ) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, f"health under '' is {status}, not SERVING"


def check_info_is_sane(channel: grpc.Channel) -> None:
    """Info names the model and its revision, and reports usable defaults, limits and capabilities."""
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
    assert info.HasField("capabilities"), "Info has no capabilities (seeded, negative_prompt, sizes, max_side)"
    caps = info.capabilities
    assert caps.max_side >= max(info.default_width, info.default_height), (
        f"capabilities.max_side {caps.max_side} is below the default size"
    )
    for size in caps.sizes:
        assert size.width > 0 and size.height > 0, f"capabilities.sizes lists {size.width}x{size.height}"


def check_each_prompt_gets_one_png_with_its_index_seed_and_model(channel: grpc.Channel) -> None:
    """One PNG per index, streamed in any order, at the default size, with its seed and
    Info's model id and revision; distinct prompts give distinct images."""
    info = _info(channel)
    texts = TEXTS[: info.max_batch]
    images = _generate(channel, [_prompt(text, seed=10 + i) for i, text in enumerate(texts)])
    indexes = sorted(image.index for image in images)
    assert indexes == list(range(len(texts))), f"indexes {indexes}, expected each of 0..{len(texts) - 1} once"
    size = (info.default_width, info.default_height)
    for image in images:
        where = f"prompts[{image.index}]"
        assert not image.refused, f"{where} was refused: {image.refusal_reason}"
        assert image.seed == 10 + image.index, f"{where}: seed {image.seed} echoed, {10 + image.index} sent"
        assert (image.model_id, image.revision) == (info.model.model_id, info.model.revision), (
            f"{where}: model {image.model_id!r} revision {image.revision!r} on the image, "
            f"Info says {info.model.model_id!r} revision {info.model.revision!r}"
        )
        assert (image.width, image.height) == size, f"{where}: {image.width}x{image.height}, not the default {size}"
        assert _png_size(image.png, where) == size, f"{where}: the PNG is not {size[0]}x{size[1]}"
        assert image.elapsed_s > 0, f"{where}: elapsed_s {image.elapsed_s}"
    assert len({image.png for image in images}) == len(texts), "distinct prompts gave identical images"


def check_an_explicit_size_is_rendered(channel: grpc.Channel) -> None:
    """A requested width and height (a listed size, or multiples of size_multiple) are the image's."""
    info = _info(channel)
    width, height = _a_size(info)
    fields: dict[str, float] = {"width": width, "height": height}
    if info.capabilities.sampling_params:
        fields |= {"steps": 2, "guidance_scale": 1.0}
    image = _one_image(channel, _prompt(TEXTS[1], 3), **fields)
    assert (image.width, image.height) == (width, height), f"asked {width}x{height}, got {image.width}x{image.height}"
    assert _png_size(image.png, "the image") == (width, height), f"the PNG is not {width}x{height}"


def check_the_same_seed_gives_the_same_image(channel: grpc.Channel) -> None:
    """Where the server says it is seeded: the same prompt and seed give the same pixels,
    another seed another image."""
    info = _info(channel)
    if not info.capabilities.seeded:
        raise Skipped("the server says it is not seeded (capabilities.seeded false)")
    first, second = (_one_image(channel, _prompt(TEXTS[2], 77)) for _ in range(2))
    other = _one_image(channel, _prompt(TEXTS[2], 78))
    pixels = [Image.open(io.BytesIO(image.png)).convert("RGB").tobytes() for image in (first, second, other)]
    assert pixels[0] == pixels[1], "the same prompt and seed gave different images, though the server says seeded"
    assert pixels[0] != pixels[2], "seeds 77 and 78 gave the same image"


def check_refusals_have_the_documented_form(channel: grpc.Channel, refusal_prompt: str | None = None) -> None:
    """A refused prompt comes back as refused=true with a reason and no image, beside the
    other prompts' images (needs a prompt the model refuses: --refusal-prompt)."""
    if not refusal_prompt:
        raise Skipped("no prompt known to be refused; give one with --refusal-prompt")
    images = _generate(channel, [_prompt(TEXTS[0], 5), _prompt(refusal_prompt, 6)])
    by_index = {image.index: image for image in images}
    assert sorted(by_index) == [0, 1], f"indexes {sorted(by_index)} for 2 prompts"
    refused = by_index[1]
    assert refused.refused, "the refusal prompt was not refused"
    assert not refused.png, f"a refused prompt carries {len(refused.png)} bytes of image"
    assert refused.refusal_reason.strip(), "a refusal without refusal_reason"
    assert refused.seed == 6, f"the refusal echoes seed {refused.seed}, 6 sent"
    assert not by_index[0].refused and by_index[0].png, "the other prompt of the request got no image"


def bad_requests(info: generator_pb2.GeneratorInfo) -> list[tuple[str, list, dict, str]]:
    """(what, prompts, other fields, the field the error must name)."""
    fox = _prompt(TEXTS[0], 1)
    odd = info.size_multiple * 8 + 1  # not a multiple, unless every size is
    not_multiples = [("width", {"width": odd}), ("height", {"height": odd})] if info.size_multiple > 1 else []
    cases: list[tuple[str, list, dict, str]] = [
        ("no prompts", [], {}, "prompts"),
        *((f"{name} not a multiple", [fox], fields, name) for name, fields in not_multiples),
        ("a huge prompt", [fox, _prompt("x" * 100_000, 2)], {}, "prompts[1].text"),
        ("a negative seed", [fox, _prompt(TEXTS[1], -3)], {}, "prompts[1].seed"),
        ("a blank prompt", [_prompt("   ", 1)], {}, "prompts[0].text"),
        ("a far too large width", [fox], {"width": info.size_multiple * (INT32_MAX // info.size_multiple)}, "width"),
    ]
    if info.capabilities.sampling_params:
        cases += [
            ("steps 0", [fox], {"steps": 0}, "steps"),
            ("far too many steps", [fox], {"steps": INT32_MAX}, "steps"),
            ("a negative guidance", [fox], {"guidance_scale": -1.0}, "guidance_scale"),
        ]
    if not info.capabilities.negative_prompt:
        cases.append(("a negative prompt it cannot use", [_prompt(TEXTS[0], 1, "blurry")], {}, "negative_prompt"))
    return cases


def _refused_with(channel: grpc.Channel, prompts: list, fields: dict, what: str) -> grpc.RpcError:
    try:
        _generate(channel, prompts, timeout=60, **fields)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"{what}: accepted")


def check_bad_requests_are_invalid_argument_naming_the_field(channel: grpc.Channel) -> None:
    """Malformed requests fail with INVALID_ARGUMENT, and the message names the field."""
    info = _info(channel)
    for what, prompts, fields, field in bad_requests(info):
        err = _refused_with(channel, prompts, fields, what)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {err.code().name}, not INVALID_ARGUMENT"
        assert field in (err.details() or ""), f"{what}: the message {err.details()!r} does not name {field}"


def check_max_batch_is_enforced(channel: grpc.Channel) -> None:
    """More prompts than max_batch are refused with INVALID_ARGUMENT naming prompts; max_batch itself is served."""
    info = _info(channel)
    over = [_prompt(TEXTS[i % len(TEXTS)], i) for i in range(info.max_batch + 1)]
    err = _refused_with(channel, over, {}, f"{len(over)} prompts with max_batch {info.max_batch}")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code().name}, not INVALID_ARGUMENT"
    assert "prompts" in (err.details() or ""), f"the message {err.details()!r} does not name prompts"
    assert len(_generate(channel, over[:-1])) == info.max_batch, "max_batch prompts did not give max_batch images"


def check_a_missed_deadline_stops_the_work(channel: grpc.Channel) -> None:
    """A request whose deadline passes fails with DEADLINE_EXCEEDED, the server stops
    rendering it (steps_run settles), and the next request is served."""
    info = _info(channel)
    prompts = [_prompt(TEXTS[i % len(TEXTS)], 100 + i) for i in range(info.max_batch)]
    try:
        _generate(channel, prompts, timeout=0.05)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"{err.code().name}, not DEADLINE_EXCEEDED"
    else:
        raise Skipped(f"{len(prompts)} images came within a 0.05 s deadline: too fast to miss one")
    if _info(channel).steps_run:
        settled = _wait_for_steps_to_settle(channel, timeout_s=60)
        assert settled, "steps_run still grows 60 s after the deadline: the work was not stopped"
    _one_image(channel, _prompt(TEXTS[1], 1), timeout=300)


def _wait_for_steps_to_settle(channel: grpc.Channel, *, timeout_s: float) -> bool:
    """True once steps_run stops changing for a second."""
    deadline = time.monotonic() + timeout_s
    last = _info(channel).steps_run
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _info(channel).steps_run
        if now == last:
            return True
        last = now
    return False


CHECKS: list[Callable[..., None]] = [
    check_health_is_serving_under_the_empty_name,
    check_info_is_sane,
    check_each_prompt_gets_one_png_with_its_index_seed_and_model,
    check_an_explicit_size_is_rendered,
    check_the_same_seed_gives_the_same_image,
    check_refusals_have_the_documented_form,
    check_bad_requests_are_invalid_argument_naming_the_field,
    check_max_batch_is_enforced,
    check_a_missed_deadline_stops_the_work,
]
