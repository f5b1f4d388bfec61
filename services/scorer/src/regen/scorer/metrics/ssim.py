"""SSIM between a reference and its candidates, computed with torchmetrics.

The definition: mean SSIM over the RGB channels, Gaussian window 11 (sigma 1.5, truncated
at 3.5 sigma), data range 1, the candidate resized bicubically to the reference's size,
and the border of half a window excluded from the mean, as scikit-image does.
torchmetrics averages the SSIM map over the whole image, border included (computed on
reflect-padded input); we take its full SSIM map and drop the border before averaging,
which makes the two agree to ~1e-6 in float32.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torchmetrics.functional.image import structural_similarity_index_measure

from regen.scorer.metrics.base import MetricBase, MetricContext, MetricInfo, Pair

SIGMA = 1.5
WINDOW = 11
DATA_RANGE = 1.0
BORDER = (WINDOW - 1) // 2
SSIM_ID = "ssim;win=11;sigma=1.5;range=1;color=rgb;resize=bicubic"


class SsimOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Candidate pixels per chunk: bounds SSIM's working memory (~60 bytes per pixel).
    chunk_pixels: int = Field(4 * 1024 * 1024, ge=1)


class SsimMetric(MetricBase):
    name: ClassVar[str] = "ssim"
    Options = SsimOptions
    min_reference_side: ClassVar[int] = WINDOW

    def __init__(self, options: SsimOptions, context: MetricContext) -> None:
        self.info = MetricInfo(
            id=SSIM_ID,
            name=self.name,
            definition=(
                "mean SSIM over RGB channels: Gaussian window 11, sigma 1.5, data range 1, "
                "candidate resized (bicubic) to the reference's size, 5-pixel border excluded"
            ),
        )
        self._chunk_pixels = options.chunk_pixels
        self._device = torch.device(context.device)
        self._one_by_one = context.batch_invariant

    @classmethod
    def load(cls, options: Any, context: MetricContext) -> Self:
        return cls(options, context)

    def extra_pixels(self, reference_pixels: int, candidates: int) -> int:
        # Every candidate is resized to the reference's size.
        return reference_pixels * candidates

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        """Pairs with the same reference size run together, at most `chunk_pixels`
        candidate pixels at once, or each pair alone in batch-invariant mode."""
        scores = [0.0] * len(pairs)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, pair in enumerate(pairs):
            size = pair.reference.image.size
            if min(size) < WINDOW:
                raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW}; got {size}")
            by_size[size].append(i)
        for (width, height), indices in by_size.items():
            per_chunk = 1 if self._one_by_one else max(1, self._chunk_pixels // (width * height))
            for start in range(0, len(indices), per_chunk):
                chunk = indices[start : start + per_chunk]
                references = _stack([pairs[i].reference.image for i in chunk], self._device)
                candidates = _stack([_resized(pairs[i].candidate, (width, height)) for i in chunk], self._device)
                for i, value in zip(chunk, _ssim(references, candidates).tolist(), strict=True):
                    scores[i] = value
        return scores


def _resized(candidate: Image.Image, size: tuple[int, int]) -> Image.Image:
    if candidate.size == size:
        return candidate
    return candidate.resize(size, Image.Resampling.BICUBIC)


def _stack(images: Sequence[Image.Image], device: torch.device) -> torch.Tensor:
    # Move uint8 to the device, convert there: a quarter of the bytes cross the bus.
    array = np.stack([np.asarray(img, dtype=np.uint8) for img in images])
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def _ssim(references: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    # TF32 convolutions (the CUDA default) cost ~1e-3 of precision; SSIM must not.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _, full = structural_similarity_index_measure(
            candidates,
            references,
            gaussian_kernel=True,
            sigma=SIGMA,
            kernel_size=WINDOW,
            data_range=DATA_RANGE,
            reduction="none",
            return_full_image=True,
        )
    return full[..., BORDER:-BORDER, BORDER:-BORDER].mean(dim=(1, 2, 3))
