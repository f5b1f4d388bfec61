"""SSIM between a reference and candidates, with torchmetrics, as SPEC §3 defines it.

torchmetrics averages the SSIM map over the whole image, border included (computed on
reflect-padded input); scikit-image, the reference implementation we must match,
averages only where the window fits inside the image. We take torchmetrics' full SSIM
map and drop the half-window border before averaging, which makes the two agree to
~1e-6 in float32.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure

from regen.scorer.metrics import SSIM_DATA_RANGE, SSIM_SIGMA, SSIM_WINDOW

BORDER = (SSIM_WINDOW - 1) // 2
MIN_SIDE = SSIM_WINDOW


def resize_to_reference(candidate: Image.Image, size: tuple[int, int]) -> Image.Image:
    if candidate.size == size:
        return candidate
    return candidate.resize(size, Image.Resampling.BICUBIC)


def _stack(images: Sequence[Image.Image], device: torch.device) -> torch.Tensor:
    # Move uint8 to the device, convert there: a quarter of the bytes cross the bus.
    array = np.stack([np.asarray(img, dtype=np.uint8) for img in images])
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def _ssim_chunk(references: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    # TF32 convolutions (the CUDA default) cost ~1e-3 of precision; SSIM must not.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _, full = structural_similarity_index_measure(
            candidates,
            references,
            gaussian_kernel=True,
            sigma=SSIM_SIGMA,
            kernel_size=SSIM_WINDOW,
            data_range=SSIM_DATA_RANGE,
            reduction="none",
            return_full_image=True,
        )
    return full[..., BORDER:-BORDER, BORDER:-BORDER].mean(dim=(1, 2, 3))


def ssim_scores(
    references: Sequence[Image.Image],
    candidates: Sequence[Image.Image],
    *,
    device: torch.device,
    chunk_pixels: int,
    one_by_one: bool = False,
) -> list[float]:
    """SSIM of each candidate against its reference (pairs, same length). Pairs with the
    same reference size run together, at most `chunk_pixels` candidate pixels at once,
    or each pair alone when `one_by_one`."""
    if len(references) != len(candidates):
        raise ValueError("references and candidates must pair up")
    scores = [0.0] * len(candidates)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, ref in enumerate(references):
        if min(ref.size) < MIN_SIDE:
            raise ValueError(f"SSIM needs images of at least {MIN_SIDE}x{MIN_SIDE}; got {ref.size}")
        by_size[ref.size].append(i)
    for (width, height), indices in by_size.items():
        per_chunk = 1 if one_by_one else max(1, chunk_pixels // (width * height))
        for start in range(0, len(indices), per_chunk):
            chunk = indices[start : start + per_chunk]
            refs = _stack([references[i] for i in chunk], device)
            cands = _stack([resize_to_reference(candidates[i], (width, height)) for i in chunk], device)
            for i, value in zip(chunk, _ssim_chunk(refs, cands).tolist(), strict=True):
                scores[i] = value
    return scores
