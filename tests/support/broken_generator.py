"""A small regen.v1.Generator that follows the contract, unless told to break it in one
named way: for the tests that the conformance kit and the orchestrator catch each
violation with the right reason. It runs a grpc.aio server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

MODEL_ID, REVISION = "broken-example", "r1"
DEFAULT_SIZE = 32
MAX_BATCH = 4
FAULTS = (
    "none",
    "jpeg",  # JPEG bytes instead of PNG
    "claims_other_size",  # the reply's width/height differ from the PNG's
    "smaller",  # a PNG smaller than the size asked for, claimed as such
    "missing",  # the last prompt gets no image
    "duplicate",  # the first prompt's image twice
    "wrong_index",  # an index beyond the prompts
    "wrong_seed",  # a seed other than the one sent
    "wrong_model",  # another model id on the image than Info's
    "no_health",  # no grpc.health.v1 at all
    "health_other_name",  # health only under "regen.v1.Generator", not ""
    "flaky",  # every first call: all images but the last, then UNAVAILABLE
    "busy",  # the first two calls: RESOURCE_EXHAUSTED
    "unauthenticated",  # every call: UNAUTHENTICATED, as a vendor engine whose key is refused
    # Not a violation: refuses (in the contract's form) every prompt that contains
    # REFUSED_WORD, and every image whose seed is in `refuse_seeds`.
    "refuses",
)
REFUSED_WORD = "forbidden"
TOKEN_BUDGET = 77


def _png(text: str, seed: int, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    d = hashlib.sha256(f"{text}|{seed}".encode()).digest()
    image = Image.new("RGB", size, (d[0], d[1], d[2]))
    image.putpixel((0, 0), (d[3], d[4], d[5]))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


class BrokenGenerator(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, fault: str, refuse_seeds: frozenset[int] = frozenset()) -> None:
        self.fault = fault
        self.refuse_seeds = refuse_seeds
        # The prompt texts of every Generate request received, in order.
        self.requests: list[list[str]] = []

    async def Info(self, request, context):
        return generator_pb2.GeneratorInfo(
            model=common_pb2.ModelInfo(model_id=MODEL_ID, revision=REVISION, backend="test", device="cpu"),
            server=common_pb2.ServerInfo(regen_version="test"),
            default_width=DEFAULT_SIZE,
            default_height=DEFAULT_SIZE,
            max_batch=MAX_BATCH,
            prompt_token_budget=TOKEN_BUDGET,
            size_multiple=8,
            capabilities=generator_pb2.GeneratorCapabilities(seeded=True, max_side=256),
        )

    async def Generate(self, request, context):
        problem = _problem(request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.requests.append([spec.text for spec in request.prompts])
        if self.fault == "unauthenticated":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "generator: the images API refused the API key")
        if self.fault == "busy" and len(self.requests) <= 2:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full; retry later")
        width = request.width if request.HasField("width") else DEFAULT_SIZE
        height = request.height if request.HasField("height") else DEFAULT_SIZE
        images = [self._image(i, spec, width, height) for i, spec in enumerate(request.prompts)]
        if self.fault == "missing":
            images = images[:-1]
        elif self.fault == "duplicate":
            images.append(images[0])
        elif self.fault == "wrong_index":
            images[-1].index = len(request.prompts)
        flaky = self.fault == "flaky" and len(self.requests) % 2 == 1
        for image in images[:-1] if flaky else images:
            await asyncio.sleep(0)
            yield image
        if flaky:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the vendor API answered 500 for one prompt")

    def _image(self, index: int, spec, width: int, height: int) -> generator_pb2.GeneratedImage:
        if self.fault == "refuses" and (REFUSED_WORD in spec.text.lower() or spec.seed in self.refuse_seeds):
            return generator_pb2.GeneratedImage(
                index=index,
                refused=True,
                refusal_reason="content policy (test generator)",
                seed=spec.seed,
                model_id=MODEL_ID,
                revision=REVISION,
            )
        size = (width // 2, height // 2) if self.fault == "smaller" else (width, height)
        png = _png(spec.text, spec.seed, size, "JPEG" if self.fault == "jpeg" else "PNG")
        claimed = (width + 8, height) if self.fault == "claims_other_size" else size
        return generator_pb2.GeneratedImage(
            index=index,
            png=png,
            seed=spec.seed + 1 if self.fault == "wrong_seed" else spec.seed,
            elapsed_s=0.01,
            width=claimed[0],
            height=claimed[1],
            model_id="some-other-model" if self.fault == "wrong_model" else MODEL_ID,
            revision=REVISION,
        )


class Health(health_pb2_grpc.HealthServicer):
    """SERVING for the given names, NOT_FOUND for any other (as gRPC's health protocol
    says; grpcio's own servicer answers SERVING for '' even when nobody set it)."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    async def Check(self, request, context):
        if request.service not in self.names:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _problem(request) -> str:
    """The contract's INVALID_ARGUMENT checks, enough for the kit's bad requests."""
    if not request.prompts:
        return "prompts: empty"
    if len(request.prompts) > MAX_BATCH:
        return f"prompts: {len(request.prompts)} prompts exceed max_batch {MAX_BATCH}"
    for name in ("width", "height"):
        if request.HasField(name) and (getattr(request, name) % 8 or not 8 <= getattr(request, name) <= 256):
            return f"{name}: must be a multiple of 8 from 8 to 256"
    for i, spec in enumerate(request.prompts):
        if not spec.text.strip() or len(spec.text) > 1000:
            return f"prompts[{i}].text: empty or longer than 1000 characters"
        if spec.seed < 0:
            return f"prompts[{i}].seed: negative"
        if spec.negative_prompt:
            return f"prompts[{i}].negative_prompt: this model has none"
    return ""


@contextmanager
def serve(fault: str, credentials: grpc.ServerCredentials | None = None) -> Iterator[str]:
    """A server with `fault` on 127.0.0.1 (TLS with `credentials`); yields its address."""
    with serving(fault, credentials=credentials) as (address, _servicer):
        yield address


@contextmanager
def serving(
    fault: str, refuse_seeds: frozenset[int] = frozenset(), credentials: grpc.ServerCredentials | None = None
) -> Iterator[tuple[str, BrokenGenerator]]:
    """Like `serve`, also yielding the servicer (to read the requests it received)."""
    assert fault in FAULTS, fault
    servicer = BrokenGenerator(fault, refuse_seeds)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, server)
        if fault != "no_health":
            names = ["regen.v1.Generator"] if fault == "health_other_name" else ["", "regen.v1.Generator"]
            health_pb2_grpc.add_HealthServicer_to_server(Health(names), server)
        port = (
            server.add_insecure_port("127.0.0.1:0")
            if credentials is None
            else server.add_secure_port("127.0.0.1:0", credentials)
        )
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
