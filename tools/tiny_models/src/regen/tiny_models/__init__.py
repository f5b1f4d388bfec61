"""Tiny random-weight models of the real architectures, built offline for tests.

No machine here can download weights, so the tests and the `tiny` preset use models that
this package builds from scratch: real classes, real configs, real processors, random
weights, saved with `save_pretrained` and loaded back through exactly the path a real
checkpoint takes. Their outputs mean nothing; their shapes, batching and speed do.

    from regen.tiny_models import build_all
    paths = build_all(Path("~/.cache/regen/tiny-models").expanduser())   # {name: folder}

or from the shell: `regen tiny-models [--out DIR] [--force] [--only NAME...]` (also
`python -m regen.tiny_models`). Folders (all four, ~12 MB, a few seconds on two cores):

- `clip/` (built by the scorer's CLIP metric): `CLIPModel` (hidden 32, 2 layers, patch 32,
  224×224, projection 16) with a `CLIPProcessor` (`CLIPImageProcessor` + `CLIPTokenizer`); `AutoProcessor` works.
- `dinov2/` (built by the scorer's DINOv2 metric): `Dinov2Model` (hidden 32, 2 layers, patch
  14) with a `BitImageProcessor` (resize 64, center-crop 56 → 4×4 patches + CLS = 17 tokens).
- `stable-diffusion/`: `StableDiffusionPipeline` (UNet (32, 64), VAE scale factor 2,
  CLIP text encoder hidden 32, DDIM); default 64×64; `AutoPipelineForText2Image` works.
- `qwen2.5-vl/`: `Qwen2_5_VLForConditionalGeneration` with `Qwen2_5_VLProcessor`
  (byte-level BPE of ~4.1k tokens, Qwen chat template, images 56..112 px a side).

Builds are seeded (same seed, same bytes) and atomic; `manifest.json` in the folder
records each model's builder version, seed and file hashes, and `build_all` skips a model
that is already current unless `force=True`. Importing this package does not import torch.
"""

from regen.tiny_models.build import BuildResult, build_all, build_models, model_names, model_specs, read_manifest
from regen.tiny_models.cli import cli_main, main

__all__ = [
    "BuildResult",
    "build_all",
    "build_models",
    "cli_main",
    "main",
    "model_names",
    "model_specs",
    "read_manifest",
]
