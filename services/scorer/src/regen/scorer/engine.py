"""The scorer engine: CLIP, DINOv2 and SSIM over decoded images, no transport.

`score_batch` takes pairs (reference, candidate, metrics) from any number of requests
and runs one forward pass per model over all their candidates plus the references
whose embeddings are not cached yet. Reference embeddings are cached by (metric id,
sha256 of the reference bytes), so later rounds of a case only embed candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from regen.common.images import sha256_hex
from regen.common.settings import resolve_device, resolve_dtype
from regen.scorer.cache import LruCache
from regen.scorer.embedders import ImageEmbedder, LoadedModel, load_clip, load_dinov2
from regen.scorer.metrics import MetricSpec, select_metrics, ssim_spec
from regen.scorer.settings import ScorerSettings
from regen.scorer.ssim import ssim_scores


@dataclass(frozen=True)
class Reference:
    """A decoded reference and the sha256 of its encoded bytes (the cache key)."""

    sha256: str
    image: Image.Image

    @classmethod
    def from_image(cls, image: Image.Image, encoded: bytes) -> Reference:
        return cls(sha256=sha256_hex(encoded), image=image)


@dataclass(frozen=True)
class PairJob:
    """One candidate to score against its reference with the given metrics."""

    reference: Reference
    candidate: Image.Image
    metric_ids: frozenset[str]


class ScorerEngine:
    def __init__(
        self,
        embedders: Sequence[ImageEmbedder],
        *,
        device: str,
        reference_cache_size: int,
        ssim_chunk_pixels: int,
        batch_invariant: bool = False,
    ) -> None:
        self.embedders = list(embedders)
        self.device = torch.device(device)
        self.ssim = ssim_spec()
        self.metrics: tuple[MetricSpec, ...] = (*(e.spec for e in self.embedders), self.ssim)
        self.reference_cache: LruCache[torch.Tensor] = LruCache(reference_cache_size)
        self.ssim_chunk_pixels = ssim_chunk_pixels
        self.batch_invariant = batch_invariant

    @classmethod
    def load(cls, settings: ScorerSettings) -> ScorerEngine:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        clip = load_clip(settings.clip_model, settings.clip_revision, device, dtype)
        dinov2 = load_dinov2(settings.dinov2_model, settings.dinov2_revision, device, dtype, settings.dinov2_pooling)
        return cls(
            [clip, dinov2],
            device=device,
            reference_cache_size=settings.reference_cache_size,
            ssim_chunk_pixels=settings.ssim_chunk_pixels,
            batch_invariant=settings.batch_invariant,
        )

    @property
    def models(self) -> list[LoadedModel]:
        return [e.loaded for e in self.embedders]

    def select_metrics(self, requested: Sequence[str]) -> tuple[MetricSpec, ...]:
        return select_metrics(self.metrics, requested)

    def score_batch(self, jobs: Sequence[PairJob]) -> list[dict[str, float]]:
        """Scores per job, keyed by metric id. Runs on the model's worker thread."""
        results: list[dict[str, float]] = [{} for _ in jobs]
        for embedder in self.embedders:
            wanted = [i for i, job in enumerate(jobs) if embedder.spec.id in job.metric_ids]
            if wanted:
                similarities = self._cosine(embedder, [jobs[i] for i in wanted])
                for i, value in zip(wanted, similarities, strict=True):
                    results[i][embedder.spec.id] = value
        wanted = [i for i, job in enumerate(jobs) if self.ssim.id in job.metric_ids]
        if wanted:
            values = ssim_scores(
                [jobs[i].reference.image for i in wanted],
                [jobs[i].candidate for i in wanted],
                device=self.device,
                chunk_pixels=self.ssim_chunk_pixels,
                one_by_one=self.batch_invariant,
            )
            for i, value in zip(wanted, values, strict=True):
                results[i][self.ssim.id] = value
        return results

    def _cosine(self, embedder: ImageEmbedder, jobs: Sequence[PairJob]) -> list[float]:
        model_id = embedder.spec.id
        vectors: dict[str, torch.Tensor] = {}
        to_embed: dict[str, Image.Image] = {}
        for job in jobs:
            sha = job.reference.sha256
            if sha in vectors or sha in to_embed:
                continue
            cached = self.reference_cache.get((model_id, sha))
            if cached is None:
                to_embed[sha] = job.reference.image
            else:
                vectors[sha] = cached
        # One forward pass: the uncached references, then every candidate.
        embedded = embedder.embed(
            [*to_embed.values(), *(job.candidate for job in jobs)], one_by_one=self.batch_invariant
        )
        for row, sha in enumerate(to_embed):
            vectors[sha] = embedded[row].clone()
            self.reference_cache.put((model_id, sha), vectors[sha])
        candidates = embedded[len(to_embed) :]
        references = torch.stack([vectors[job.reference.sha256] for job in jobs])
        return (candidates * references).sum(dim=-1).clamp(-1.0, 1.0).tolist()
