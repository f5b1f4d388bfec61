"""The generator service with the tiny Stable Diffusion pipeline, through a real
`regen serve generator --preset tiny` process on 127.0.0.1: what this implementation
does beyond the contract (regen.conformance.generator, run by tests/contract)."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

FOX = "a red fox sleeping in fresh snow, soft morning light, watercolor"
CAR = "a vintage blue car parked on a cobblestone street, film photo"
TOWER = "a tall lighthouse on a rocky cliff at sunset, oil painting"


@pytest.fixture(scope="module")
def stub(generator_address: str) -> generator_pb2_grpc.GeneratorStub:
    channel = grpc.insecure_channel(generator_address)
    yield generator_pb2_grpc.GeneratorStub(channel)
    channel.close()


def prompt(text: str, seed: int, negative: str = "") -> generator_pb2.PromptSpec:
    return generator_pb2.PromptSpec(text=text, seed=seed, negative_prompt=negative)


def generate(stub, *prompts: generator_pb2.PromptSpec, timeout: float = 120, **fields) -> list:
    """Images in arrival order."""
    request = generator_pb2.GenerateRequest(prompts=list(prompts), **fields)
    return list(stub.Generate(request, timeout=timeout))


def by_index(images) -> dict[int, generator_pb2.GeneratedImage]:
    return {image.index: image for image in images}


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def info(stub) -> generator_pb2.GeneratorInfo:
    return stub.Info(common_pb2.InfoRequest(), timeout=30)


def test_info_reports_budget_identity_and_defaults(stub, tiny_models) -> None:
    reply = info(stub)
    assert reply.prompt_token_budget == 77  # the tiny pipeline's CLIP tokenizer
    assert reply.model.model_id == str(tiny_models / "stable-diffusion")
    assert reply.model.revision.startswith("sha256:")
    assert (reply.model.backend, reply.model.device, reply.model.dtype) == ("diffusers", "cpu", "float32")
    assert (reply.default_width, reply.default_height, reply.default_steps) == (64, 64, 4)
    assert reply.default_guidance_scale == pytest.approx(5.0)
    assert reply.max_batch == 16 and reply.size_multiple == 8
    assert {"torch", "diffusers", "grpcio"} <= set(reply.server.library_versions)
    caps = reply.capabilities
    assert (caps.seeded, caps.negative_prompt, caps.sampling_params) == (True, True, True)
    assert list(caps.sizes) == [] and caps.max_side == 2048


def test_images_name_their_model_and_cost_no_api_calls(stub) -> None:
    reply = info(stub)
    for image in generate(stub, prompt(FOX, 1), prompt(CAR, 2)):
        assert (image.model_id, image.revision) == (reply.model.model_id, reply.model.revision)
        assert image.usage == common_pb2.Usage()  # a local model: all zero


def test_same_request_twice_gives_identical_png_bytes(stub) -> None:
    first = by_index(generate(stub, prompt(FOX, 7), prompt(CAR, 8)))
    second = by_index(generate(stub, prompt(FOX, 7), prompt(CAR, 8)))
    for index in (0, 1):
        assert first[index].png == second[index].png
        assert np.array_equal(pixels(first[index].png), pixels(second[index].png))


def test_an_image_does_not_depend_on_its_batch(stub) -> None:
    """The tiny preset is batch-invariant (one pipeline call per image): the same
    (prompt, seed, settings) alone, at another position of a batch of 3 with other
    prompts, or in concurrent requests gives byte-identical PNGs."""
    before = info(stub).server
    alone = generate(stub, prompt(TOWER, 42))[0].png
    in_batch = by_index(generate(stub, prompt(FOX, 1), prompt(TOWER, 42), prompt(CAR, 3)))
    assert in_batch[1].png == alone
    with ThreadPoolExecutor(3) as pool:
        jobs = [
            pool.submit(generate, stub, prompt(CAR, 5)),
            pool.submit(generate, stub, prompt(TOWER, 42), prompt(FOX, 9)),
            pool.submit(generate, stub, prompt(TOWER, 42), steps=6),
        ]
        car, mixed, more_steps = (job.result() for job in jobs)
    assert by_index(mixed)[0].png == alone
    assert car[0].png == generate(stub, prompt(CAR, 5))[0].png
    assert more_steps[0].png != alone  # other settings, other image
    after = info(stub).server
    assert after.items - before.items == after.batches - before.batches == 9  # one call per image


def test_batched_mode_merges_requests_and_moves_pixels_by_rounding_only(tiny_models) -> None:
    """batch_invariant off (the default outside the tiny preset): concurrent requests with
    equal settings share pipeline calls, requests with other settings never do, and an
    image differs from its solo rendering only by the float rounding of batched matrix
    products (< 1e-6 before quantisation): measured <= 3 of 12,288 values, by 1 level."""
    from regen.common.settings import load_settings
    from regen.generator.core import GeneratorCore
    from regen.generator.grpc_api import BackgroundServer
    from regen.generator.settings import GeneratorSettings

    settings = load_settings(GeneratorSettings, preset="tiny", batch_invariant=False, max_wait_ms=200)
    with (
        BackgroundServer(GeneratorCore.load(settings), settings) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        batched = generator_pb2_grpc.GeneratorStub(ch)
        alone = pixels(generate(batched, prompt(TOWER, 42))[0].png)
        in_batch = by_index(generate(batched, prompt(FOX, 1), prompt(TOWER, 42), prompt(CAR, 3)))
        again = by_index(generate(batched, prompt(FOX, 1), prompt(TOWER, 42), prompt(CAR, 3)))
        assert [again[i].png for i in range(3)] == [in_batch[i].png for i in range(3)]  # same batch: exact
        before = info(batched).server
        with ThreadPoolExecutor(3) as pool:
            jobs = [
                pool.submit(generate, batched, prompt(CAR, 5)),
                pool.submit(generate, batched, prompt(TOWER, 42), prompt(FOX, 9)),
                pool.submit(generate, batched, prompt(TOWER, 42), steps=6),  # other settings: never merged
            ]
            _, mixed, more_steps = (job.result() for job in jobs)
        after = info(batched).server
        solo_more_steps = generate(batched, prompt(TOWER, 42), steps=6)[0].png
    assert after.items - before.items == 4
    assert after.batches - before.batches < 4, "concurrent requests were not batched together"
    assert more_steps[0].png == solo_more_steps
    for image in (pixels(in_batch[1].png), pixels(by_index(mixed)[0].png)):
        diff = np.abs(image.astype(int) - alone.astype(int))
        assert diff.max() <= 1, f"max difference {diff.max()} levels"
        assert (diff > 0).mean() < 0.005, f"{(diff > 0).sum()} of {diff.size} values differ"


def test_seed_and_negative_prompt_change_the_image(stub) -> None:
    base = pixels(generate(stub, prompt(FOX, 1))[0].png)
    assert not np.array_equal(pixels(generate(stub, prompt(FOX, 2))[0].png), base)
    negative = generate(stub, prompt(FOX, 1, negative="blurry, low quality"))[0].png
    assert not np.array_equal(pixels(negative), base)
    # A negative prompt next to prompts without one is batched separately, so theirs stay put.
    mixed = by_index(generate(stub, prompt(FOX, 1), prompt(FOX, 1, negative="blurry, low quality")))
    assert mixed[0].png == generate(stub, prompt(FOX, 1))[0].png
    assert mixed[1].png == negative


def test_over_budget_prompts_are_cut_like_the_pipeline_and_reported(stub) -> None:
    short = generate(stub, prompt(FOX, 1))[0]
    assert not short.prompt_truncated and 2 < short.prompt_tokens <= 77

    words = " ".join(["red fox", "snow", "pine trees", "morning light"] * 20)
    long_a = generate(stub, prompt(words + ", in the style of a watercolor", 1))[0]
    long_b = generate(stub, prompt(words + ", as a neon night photograph", 1))[0]
    assert long_a.prompt_truncated and long_b.prompt_truncated
    assert long_a.prompt_tokens > 77 and long_b.prompt_tokens > 77
    # The two prompts differ only past the budget, which the pipeline cuts: same image.
    assert np.array_equal(pixels(long_a.png), pixels(long_b.png))


@pytest.mark.parametrize(
    ("fields", "prompts", "expected"),
    [
        ({}, [], "prompts: empty"),
        ({"steps": 0}, [prompt(FOX, 1)], "steps: 0"),
        ({"width": 60}, [prompt(FOX, 1)], "width: 60 is not a multiple of 8"),
        ({"height": 100}, [prompt(FOX, 1)], "height: 100 is not a multiple of 8"),
        ({}, [prompt(FOX, 1), prompt("x" * 100_000, 2)], "prompts[1].text: 100000 characters"),
        ({}, [prompt(FOX, 1), prompt(CAR, -3)], "prompts[1].seed: -3 is negative"),
        ({}, [prompt(FOX, i) for i in range(17)], "17 prompts exceed this generator's max_batch of 16"),
        ({}, [prompt("   ", 1)], "prompts[0].text: empty"),
        ({"guidance_scale": -1.0}, [prompt(FOX, 1)], "guidance_scale: -1.0"),
        ({"steps": 100_000}, [prompt(FOX, 1)], "steps: 100000 is out of range"),
    ],
    ids=[
        "no-prompts",
        "steps-0",
        "width",
        "height",
        "huge-prompt",
        "negative-seed",
        "over-max-batch",
        "blank-prompt",
        "negative-guidance",
        "too-many-steps",
    ],
)
def test_bad_requests_are_invalid_argument(stub, fields, prompts, expected) -> None:
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, *prompts, timeout=30, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in err.value.details()


def test_an_expired_deadline_stops_the_work(stub) -> None:
    """500 steps at 128x128 take far longer than the 2 s deadline; once it passes, the
    server stops the pipeline mid-run (steps_run) and serves the next request."""
    before = info(stub)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        generate(stub, prompt(FOX, 1), steps=500, width=128, height=128, timeout=2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    while True:  # wait for the interrupted batch to end (bounded)
        after = info(stub)
        if after.server.batches > before.server.batches or time.monotonic() - started > 120:
            break
        time.sleep(0.1)
    assert after.server.batches == before.server.batches + 1, "the request's batch never ran"
    steps = after.steps_run - before.steps_run
    assert 1 <= steps < 500, f"{steps} of 500 steps ran after the deadline"
    time.sleep(0.5)
    assert info(stub).steps_run == after.steps_run  # nothing still running in the background
    assert len(generate(stub, prompt(CAR, 1), timeout=60)) == 1


@pytest.mark.slow
def test_the_cli_serves_another_model_id(stub, tmp_path, tiny_models) -> None:
    """`regen serve generator --model PATH` loads what it is told (here the same tiny
    pipeline from a copy, so its revision hash is the same but its id is the new path),
    and a second process renders the same request into the same bytes."""
    import shutil

    from regen.orchestrator.launcher import LocalServices

    copy = tmp_path / "my-model"
    shutil.copytree(tiny_models / "stable-diffusion", copy)
    with (
        LocalServices(
            names=("generator",), preset="tiny", extra_args={"generator": ["--model", str(copy)]}, startup_timeout_s=300
        ) as services,
        grpc.insecure_channel(services.address("generator")) as channel,
    ):
        other = generator_pb2_grpc.GeneratorStub(channel)
        reply = info(other)
        assert reply.model.model_id == str(copy)
        assert reply.model.revision == info(stub).model.revision  # same files, same hash
        # Another process, same files and pinned threads: bit-identical PNGs.
        assert generate(other, prompt(FOX, 1))[0].png == generate(stub, prompt(FOX, 1))[0].png
