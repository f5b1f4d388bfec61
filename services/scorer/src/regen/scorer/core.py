"""The scorer's request path, as every adapter (gRPC, BentoML HTTP) serves it; no transport.

A Score request is checked (candidate count, each metric's needs, a decoded-pixel budget
read from the image headers before any decoding), its images are decoded off the event
loop, and its candidates join the candidates of concurrent requests in one batch on the
model's single worker thread, where each metric scores the pairs that asked for it in
one call (one forward pass per model).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from pydantic import ValidationError

from regen.common.batching import BatchStats, MicroBatcher
from regen.common.errors import InvalidInput, Overloaded
from regen.common.images import ImageDecodeError, ImageLimits, decode_image, sha256_hex
from regen.common.settings import resolve_device, resolve_dtype
from regen.scorer.cache import LruCache
from regen.scorer.metrics import REGISTRY
from regen.scorer.metrics.base import LoadedModel, Metric, MetricContext, MetricInfo, Pair, Reference
from regen.scorer.settings import ScorerSettings


@dataclass(frozen=True)
class PairJob:
    """One candidate to score against its reference with the given metrics."""

    pair: Pair
    metric_ids: frozenset[str]


@dataclass(frozen=True)
class ScorerDescription:
    models: list[LoadedModel]
    metrics: tuple[MetricInfo, ...]
    max_candidates: int
    stats: BatchStats


def load_metrics(settings: ScorerSettings, context: MetricContext) -> list[Metric]:
    """Every configured metric, loaded with its validated options."""
    names = settings.metrics or REGISTRY.names()
    stray = sorted(set(settings.metric_options) - set(names))
    if stray:
        raise ValueError(f"metric_options.{stray[0]}: no such metric is configured; metrics: {', '.join(names)}")
    metrics = []
    for name in names:
        try:
            cls = REGISTRY.load(name)
        except ValueError as exc:
            raise ValueError(f"metrics: {exc}") from None
        values: dict[str, Any] = {}
        given = settings.metric_options.get(name, {})
        if settings.tiny_models is not None and cls.tiny_version and "model" not in given:
            folder = settings.tiny_models / name
            if not folder.is_dir():
                raise ValueError(
                    f"metrics: {name}'s tiny model is missing at {folder}; build it with regen tiny-models"
                )
            values = cls.tiny_options(folder)
        values |= given
        try:
            options = cls.Options.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"metric_options.{name}: {problems}") from None
        metrics.append(cls.load(options, context))
    return metrics


class ScorerCore:
    """Loaded metrics behind a cross-request batcher; share one between adapters."""

    def __init__(self, metrics: Sequence[Metric], settings: ScorerSettings) -> None:
        self.metrics = list(metrics)
        ids = [metric.info.id for metric in self.metrics]
        if len(set(ids)) != len(ids):
            raise ValueError(f"metrics: two metrics share an id: {ids}")
        self._limits = settings.images.limits()
        self.max_candidates = settings.max_candidates
        self.max_request_pixels = settings.max_request_pixels
        self.max_reference_pixels = settings.max_reference_pixels
        self._batcher: MicroBatcher[PairJob, dict[str, float]] = MicroBatcher(
            lambda jobs: self.score_batch(jobs),
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue=settings.max_queue,
            name="scorer",
        )

    @classmethod
    def load(cls, settings: ScorerSettings) -> ScorerCore:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        if settings.cpu_threads:
            import torch

            torch.set_num_threads(settings.cpu_threads)
        context = MetricContext(
            device=device,
            dtype=dtype,
            batch_invariant=settings.batch_invariant,
            reference_cache=LruCache(settings.reference_cache_size),
        )
        return cls(load_metrics(settings, context), settings)

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    def describe(self) -> ScorerDescription:
        models = [metric.model for metric in self.metrics if metric.model is not None]
        infos = tuple(metric.info for metric in self.metrics)
        return ScorerDescription(models, infos, self.max_candidates, self._batcher.stats)

    def select_metrics(self, requested: Sequence[str]) -> list[Metric]:
        """Resolve names ("clip") or full ids; empty means every metric. Unknown -> InvalidInput."""
        if not requested:
            return list(self.metrics)
        by_key = {m.info.name: m for m in self.metrics} | {m.info.id: m for m in self.metrics}
        chosen: dict[str, Metric] = {}
        for i, key in enumerate(requested):
            metric = by_key.get(key)
            if metric is None:
                known = ", ".join(f"{m.info.name} ({m.info.id})" for m in self.metrics)
                raise InvalidInput(f"metrics[{i}]: unknown metric {key!r}; this scorer has {known}")
            chosen[metric.info.id] = metric
        return list(chosen.values())

    async def score(
        self, reference_png: bytes, candidate_pngs: Sequence[bytes], metrics: Sequence[str] = ()
    ) -> list[dict[str, float]]:
        """Metric id -> value for each candidate, in order. Any unusable candidate fails
        the whole request with InvalidInput naming every bad index."""
        if not candidate_pngs:
            raise InvalidInput("candidate_pngs: at least one candidate is required")
        if len(candidate_pngs) > self.max_candidates:
            raise Overloaded(
                f"candidate_pngs: {len(candidate_pngs)} candidates exceeds this scorer's limit of "
                f"{self.max_candidates} per request; split the request"
            )
        selected = self.select_metrics(metrics)
        self._check_reference_pixels(reference_png)
        self._check_pixel_budget(reference_png, candidate_pngs, selected)
        reference, candidates = await self._decode(reference_png, candidate_pngs)
        _check_reference_size(reference, selected)
        ids = frozenset(metric.info.id for metric in selected)
        return await self._batcher.run([PairJob(Pair(reference, candidate), ids) for candidate in candidates])

    def score_batch(self, jobs: Sequence[PairJob]) -> list[dict[str, float]]:
        """Scores per job, keyed by metric id. Runs on the model's worker thread."""
        results: list[dict[str, float]] = [{} for _ in jobs]
        for metric in self.metrics:
            wanted = [i for i, job in enumerate(jobs) if metric.info.id in job.metric_ids]
            if wanted:
                values = metric.score([jobs[i].pair for i in wanted])
                for i, value in zip(wanted, values, strict=True):
                    results[i][metric.info.id] = value
        return results

    def _check_reference_pixels(self, reference_png: bytes) -> None:
        pixels = _header_pixels(reference_png, self._limits)
        if pixels > self.max_reference_pixels:
            raise InvalidInput(
                f"reference_png: {pixels} pixels exceeds this scorer's max_reference_pixels of "
                f"{self.max_reference_pixels}; downscale the reference"
            )

    def _check_pixel_budget(
        self, reference_png: bytes, candidate_pngs: Sequence[bytes], metrics: Sequence[Metric]
    ) -> None:
        reference_pixels = _header_pixels(reference_png, self._limits)
        total = reference_pixels + sum(_header_pixels(data, self._limits) for data in candidate_pngs)
        total += sum(metric.extra_pixels(reference_pixels, len(candidate_pngs)) for metric in metrics)
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


def _check_reference_size(reference: Reference, metrics: Sequence[Metric]) -> None:
    width, height = reference.image.size
    for metric in metrics:
        side = metric.min_reference_side
        if min(width, height) < side:
            raise InvalidInput(
                f"reference: {width}x{height} is smaller than {metric.info.name}'s {side}x{side} minimum; "
                f"send a larger reference or leave {metric.info.name} out of metrics"
            )


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
    return Reference(sha256=sha256_hex(data), image=decode_image(data, limits, what="reference"))
