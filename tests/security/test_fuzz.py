"""Property-based tests (hypothesis) of what every service does with untrusted input:
the image decoder on random and mutated bytes, each service's request validation on
random field values, the HTTP bodies on random JSON and the gRPC servers on random
request bytes. None raises anything but the documented errors (InvalidInput and the
other RegenErrors; pydantic's ValidationError, which the HTTP adapters answer as 400).
Each test is bounded to a few seconds (max_examples, no shrinking deadline)."""

from __future__ import annotations

import asyncio
import io
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from regen.common.errors import InvalidInput, RegenError
from regen.common.images import ImageLimits, decode_image

FAST = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None, derandomize=True
)
LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=1 << 20)


def _encoded(fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 10, 90)).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


SEEDS = [_encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]


@st.composite
def mutated_images(draw) -> bytes:
    """A valid image of some format with random bytes overwritten, cut or appended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=64))


@FAST
@given(st.one_of(st.binary(max_size=2048), mutated_images()))
def test_the_decoder_raises_only_its_documented_error(data: bytes) -> None:
    try:
        image = decode_image(data, LIMITS, what="fuzz")
    except InvalidInput as exc:
        assert str(exc).startswith("fuzz:"), exc
        return
    assert image.mode == "RGB" and image.width * image.height <= LIMITS.max_pixels


# --- generator ---------------------------------------------------------------------------

TEXTS = st.text(max_size=64) | st.sampled_from(["", " ", "\x00", "a" * 5000, "\ud7ff\ue000"])
INTS = st.integers(min_value=-(2**70), max_value=2**70)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.none()


@st.composite
def generate_requests(draw):
    from regen.generator.core import GenerateRequest, PromptSpec

    prompts = draw(st.lists(st.builds(PromptSpec, TEXTS, TEXTS, INTS), max_size=12))
    maybe_int = INTS | st.none()
    return GenerateRequest(prompts, draw(maybe_int), draw(maybe_int), draw(maybe_int), draw(FLOATS))


def _engine_info(sizes=()):
    from regen.generator.engines.base import EngineInfo

    return EngineInfo("m", "r", "fake", "cpu", "float32", 77, 64, 64, 4, 5.0, 8, sizes=sizes)


@FAST
@given(generate_requests(), st.sampled_from([(), ((64, 64), (128, 64))]), st.booleans())
def test_generator_validation_raises_only_invalid_input(request, sizes, negative) -> None:
    from regen.common.settings import load_settings
    from regen.generator.core import MAX_SEED, validate
    from regen.generator.settings import GeneratorSettings

    info = _engine_info(sizes)
    info = type(info)(**{**vars(info), "supports_negative_prompt": negative})
    try:
        items = validate(request, info, load_settings(GeneratorSettings, max_batch=8))
    except InvalidInput as exc:
        assert exc.field or str(exc).startswith(("prompts", "width", "height", "steps", "guidance")), exc
        return
    assert 1 <= len(items) <= 8 and all(0 <= item.seed <= MAX_SEED for item in items)


PROMPT_BODIES = st.lists(
    st.dictionaries(st.sampled_from(["text", "seed", "negative_prompt", "y"]), INTS | TEXTS | FLOATS, max_size=4),
    max_size=4,
)
BODY_KEYS = st.sampled_from(["prompts", "width", "height", "steps", "guidance_scale", "x"])


@FAST
@given(st.dictionaries(BODY_KEYS, INTS | TEXTS | FLOATS | PROMPT_BODIES, max_size=6))
def test_generator_http_bodies_refuse_with_validation_errors_only(body) -> None:
    from regen.generator.http_api import GenerateBody

    try:
        request = GenerateBody.model_validate(body).request()
    except ValidationError:
        return
    assert all(0 <= p.seed < 2**63 for p in request.prompts)


# --- scorer ------------------------------------------------------------------------------


@FAST
@given(
    st.one_of(st.binary(max_size=512), mutated_images()),
    st.lists(st.one_of(st.binary(max_size=256), mutated_images()), max_size=4),
    st.lists(TEXTS, max_size=3),
)
def test_scorer_validation_raises_only_regen_errors(reference, candidates, metrics) -> None:
    from regen.common.settings import load_settings
    from regen.scorer.core import ScorerCore
    from regen.scorer.settings import ScorerSettings

    async def score():
        core = ScorerCore([], load_settings(ScorerSettings, max_candidates=3, max_request_pixels=4000))
        try:
            return await core.score(reference, candidates, metrics)
        finally:
            await core.close()

    try:
        results = asyncio.run(score())
    except RegenError as exc:
        assert exc.status in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"), exc
        return
    assert len(results) == len(candidates)


def test_a_huge_scorer_reference_is_refused_before_decoding() -> None:
    """A 4096x4096 reference held a worker for 46 s; now it is refused at once."""
    from regen.common.settings import load_settings
    from regen.scorer.core import ScorerCore
    from regen.scorer.settings import ScorerSettings

    big = io.BytesIO()
    Image.new("RGB", (4096, 4096), (1, 2, 3)).save(big, format="PNG")
    core = ScorerCore([], load_settings(ScorerSettings))
    started = time.monotonic()
    try:
        asyncio.run(core.score(big.getvalue(), [SEEDS[0]]))
    except InvalidInput as exc:
        assert str(exc).startswith("reference_png: 16777216 pixels exceeds this scorer's max_reference_pixels")
    else:
        raise AssertionError("a 4096x4096 reference was accepted")
    assert time.monotonic() - started < 2


# --- describer ---------------------------------------------------------------------------


@st.composite
def iuts(draw):
    from regen.describer.answers import GlobalFeatures, ImageUnderstandingTree, ObjectAttributes, SceneObject

    attributes = st.builds(ObjectAttributes, *[TEXTS] * 10)
    kinds = st.sampled_from(["person", "animal", "object"])  # the adapters refuse any other (below)
    objects = st.lists(st.builds(SceneObject, TEXTS, kinds, attributes), max_size=7)
    features = st.builds(GlobalFeatures, TEXTS, TEXTS, TEXTS, TEXTS)
    return ImageUnderstandingTree(
        draw(TEXTS), draw(features), tuple(draw(objects)), tuple(draw(st.lists(TEXTS, max_size=4)))
    )


@FAST
@given(iuts(), st.lists(st.tuples(TEXTS, TEXTS), max_size=5), INTS, INTS, TEXTS)
def test_describer_input_checks_raise_only_invalid_input(iut, differences, n, budget, prompt) -> None:
    from regen.describer import inputs
    from regen.describer.answers import Difference

    for check in (
        lambda: inputs.iut(iut, "iut", 120),
        lambda: inputs.differences([Difference(a, d) for a, d in differences], 120),
        lambda: inputs.variant_count(n, 8),
        lambda: inputs.token_budget(budget),
        lambda: inputs.text(prompt, "prompt", 400),
    ):
        try:
            check()
        except InvalidInput as exc:
            assert exc.field, exc


@FAST
@given(INTS)
def test_describer_object_types_from_the_wire_raise_only_invalid_input(value) -> None:
    from regen.common.describer_json import object_type_name

    try:
        assert object_type_name(value, "iut.objects[0].type") in ("person", "animal", "object")
    except InvalidInput as exc:
        assert exc.field == "iut.objects[0].type", exc


@FAST
@given(st.one_of(st.binary(max_size=512), mutated_images()))
def test_describer_image_input_raises_only_invalid_input(data) -> None:
    from regen.describer import inputs

    try:
        image, digest = inputs.image(data, "image_png", max_side=56, limits=LIMITS)
    except InvalidInput as exc:
        assert str(exc).startswith("image_png"), exc
        return
    assert max(image.size) <= 56 * 2 and digest.startswith("sha256:")


# --- gRPC --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(st.binary(max_size=256), st.sampled_from(["describer", "generator", "scorer"]))
def test_grpc_servers_answer_random_request_bytes_with_a_status(payload, service) -> None:
    from importlib import import_module

    import grpc

    from regen.common.grpc_server import CoreSlot, GrpcHost

    definition = import_module(f"regen.{service}.grpc_api").DEFINITION
    method = {"describer": "Variants", "generator": "Info", "scorer": "Score"}[service]

    async def call() -> grpc.StatusCode:
        host = GrpcHost("127.0.0.1", 0)
        await host.start(definition.registrations(CoreSlot()))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
                try:
                    await channel.unary_unary(f"/regen.v1.{service.capitalize()}/{method}")(payload, timeout=5)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK
        finally:
            await host.stop(0)

    # Parsable bytes reach the servicer, whose core is still loading: UNAVAILABLE.
    assert asyncio.run(call()) in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE)
