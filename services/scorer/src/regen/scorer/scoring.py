"""Score requests as every adapter (gRPC, BentoML HTTP) serves them: validate, decode
off the event loop, then coalesce the candidates of concurrent requests into shared
forward batches on the model's single worker thread."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from regen.common.batching import BatchStats, MicroBatcher
from regen.common.errors import InvalidInput, Overloaded
from regen.common.grpc_server import CoreSlot
from regen.common.images import ImageDecodeError, ImageLimits, decode_image
from regen.scorer.embedders import LoadedModel
from regen.scorer.engine import PairJob, Reference, ScorerEngine
from regen.scorer.metrics import MetricSpec
from regen.scorer.settings import ScorerSettings
from regen.scorer.ssim import MIN_SIDE


@dataclass(frozen=True)
class ScorerDescription:
    models: list[LoadedModel]
    metrics: tuple[MetricSpec, ...]
    max_candidates: int
    stats: BatchStats


def _header_pixels(data: bytes, limits: ImageLimits) -> int:
    """Pixel count from the image header alone; 0 for an image the decoder will refuse
    anyway (unreadable, or over the per-image limits), so its error names the image."""
    if len(data) > limits.max_bytes:
        return 0
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:
        return 0
    pixels = width * height
    return pixels if pixels <= limits.max_pixels else 0


def _decode_or_error(data: bytes, limits: ImageLimits, what: str) -> Image.Image | ImageDecodeError:
    try:
        return decode_image(data, limits, what=what)
    except ImageDecodeError as exc:
        return exc


def _decode_reference(data: bytes, limits: ImageLimits) -> Reference:
    return Reference.from_image(decode_image(data, limits, what="reference"), data)


class BatchedScorer:
    """The scorer's request path, shared by the gRPC servicer and the BentoML API."""

    def __init__(self, slot: CoreSlot[ScorerEngine], settings: ScorerSettings) -> None:
        self._slot = slot
        self._limits = settings.images.limits()
        self.max_candidates = settings.max_candidates
        self.max_request_pixels = settings.max_request_pixels
        self._batcher: MicroBatcher[PairJob, dict[str, float]] = MicroBatcher(
            lambda jobs: self._slot.get().score_batch(jobs),
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            name="scorer",
        )

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    def describe(self) -> ScorerDescription:
        engine = self._slot.get()
        return ScorerDescription(engine.models, engine.metrics, self.max_candidates, self._batcher.stats)

    async def score(
        self, reference_png: bytes, candidate_pngs: Sequence[bytes], metrics: Sequence[str] = ()
    ) -> list[dict[str, float]]:
        """Metric id -> value for each candidate, in order. Any unusable candidate fails
        the whole request with InvalidInput naming every bad index."""
        engine = self._slot.get()
        if not candidate_pngs:
            raise InvalidInput("candidate_pngs: at least one candidate is required")
        if len(candidate_pngs) > self.max_candidates:
            raise Overloaded(
                f"candidate_pngs: {len(candidate_pngs)} candidates exceeds this scorer's limit of "
                f"{self.max_candidates} per request; split the request"
            )
        selected = engine.select_metrics(metrics)
        self._check_pixel_budget(reference_png, candidate_pngs, with_ssim=engine.ssim in selected)
        reference, candidates = await self._decode(reference_png, candidate_pngs)
        if engine.ssim in selected and min(reference.image.size) < MIN_SIDE:
            width, height = reference.image.size
            raise InvalidInput(
                f"reference: {width}x{height} is smaller than SSIM's {MIN_SIDE}x{MIN_SIDE} window; "
                "send a larger reference or leave ssim out of metrics"
            )
        ids = frozenset(spec.id for spec in selected)
        return await self._batcher.run([PairJob(reference, candidate, ids) for candidate in candidates])

    def _check_pixel_budget(self, reference_png: bytes, candidate_pngs: Sequence[bytes], *, with_ssim: bool) -> None:
        reference_pixels = _header_pixels(reference_png, self._limits)
        total = reference_pixels + sum(_header_pixels(data, self._limits) for data in candidate_pngs)
        if with_ssim:  # every candidate is resized to the reference's size
            total += reference_pixels * len(candidate_pngs)
        if total > self.max_request_pixels:
            raise Overloaded(
                f"request: {len(candidate_pngs)} candidates need {total} decoded pixels, over this scorer's "
                f"limit of {self.max_request_pixels}; send fewer or smaller images"
            )

    async def _decode(
        self, reference_png: bytes, candidate_pngs: Sequence[bytes]
    ) -> tuple[Reference, list[Image.Image]]:
        reference = await asyncio.to_thread(_decode_reference, reference_png, self._limits)
        decoded = await asyncio.gather(
            *(
                asyncio.to_thread(_decode_or_error, data, self._limits, f"candidate {i}")
                for i, data in enumerate(candidate_pngs)
            )
        )
        errors = [item for item in decoded if isinstance(item, ImageDecodeError)]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            details = "; ".join(str(err) for err in errors)
            raise InvalidInput(f"{len(errors)} of {len(candidate_pngs)} candidates are unusable: {details}")
        return reference, [item for item in decoded if isinstance(item, Image.Image)]

    async def close(self) -> None:
        await self._batcher.close()
