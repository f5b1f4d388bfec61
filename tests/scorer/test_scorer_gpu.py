"""The scorer engine on a CUDA GPU (skipped without one): the fp16 and fp32 paths, the
processor running on the device, and SSIM without TF32 still matching scikit-image."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from skimage.metrics import structural_similarity

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from support.scenes import scene  # noqa: E402

from regen.common.images import encode_png  # noqa: E402
from regen.common.settings import load_settings  # noqa: E402
from regen.scorer.core import ScorerCore  # noqa: E402
from regen.scorer.metrics.ssim import SSIM_ID  # noqa: E402
from regen.scorer.settings import ScorerSettings  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["float16", "float32"])
def scorer(request) -> ScorerCore:
    from regen.tiny_models import build_all

    build_all(Path(os.environ["REGEN_TINY_MODELS"]), only=["clip", "dinov2"])  # no diffusers needed
    settings = load_settings(ScorerSettings, preset="tiny", device="cuda", dtype=request.param)
    core = ScorerCore.load(settings)
    assert {m.dtype for m in core.describe().models} == {request.param}
    return core


def images() -> list[Image.Image]:
    return [scene(name, (512, 512)) for name in ("portrait_1", "scene_1")]


def variants(img: Image.Image) -> list[Image.Image]:
    return [
        img.filter(ImageFilter.GaussianBlur(2)),
        img.transform(img.size, Image.Transform.AFFINE, (1, 0, 6, 0, 1, -4)),
        ImageEnhance.Color(img).enhance(0.3),
        img.resize((300, 300)),
    ]


def test_gpu_scores(scorer: ScorerCore) -> None:
    dtype = scorer.describe().models[0].dtype
    tolerance = 1e-4 if dtype == "float32" else 5e-3
    for reference in images():
        candidates = [reference, *variants(reference)]
        pngs = [encode_png(c) for c in candidates]
        batched = asyncio.run(scorer.score(pngs[0], pngs))
        singles = [asyncio.run(scorer.score(pngs[0], [png]))[0] for png in pngs]
        assert all(v == pytest.approx(1.0, abs=1e-3) for v in batched[0].values()), batched[0]
        worst = 0.0
        for together, alone in zip(batched, singles, strict=True):
            for metric_id, value in together.items():
                worst = max(worst, abs(value - alone[metric_id]))
        print(f"{dtype}: largest batched-vs-single difference {worst:.2e}")
        assert worst <= tolerance
        for candidate, scores in zip(candidates, batched, strict=True):
            resized = candidate.resize(reference.size, Image.Resampling.BICUBIC)
            expected = structural_similarity(
                np.asarray(reference, dtype=np.float64) / 255,
                np.asarray(resized, dtype=np.float64) / 255,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                channel_axis=-1,
                data_range=1,
            )
            assert scores[SSIM_ID] == pytest.approx(expected, abs=1e-3)
