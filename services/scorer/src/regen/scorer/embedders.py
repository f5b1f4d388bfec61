"""Image embedders for the CLIP and DINOv2 metrics, loaded with transformers.

Each embedder turns a list of RGB images into unit-length float32 vectors in one
forward pass, so a cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

from regen.common.identity import model_revision
from regen.scorer.metrics import CLIP, DINOV2, MetricSpec, checkpoint_label, metric_id

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    revision: str
    device: str
    dtype: str


class ImageEmbedder:
    """A vision model plus its image processor; `embed` returns (N, D) unit vectors."""

    def __init__(
        self,
        spec: MetricSpec,
        model: torch.nn.Module,
        processor,
        loaded: LoadedModel,
        pool: Literal["clip", "mean", "cls"],
    ) -> None:
        self.spec = spec
        self.model = model
        self.processor = processor
        self.loaded = loaded
        self._pool = pool
        self._device = torch.device(loaded.device)
        self._dtype = TORCH_DTYPES[loaded.dtype]

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's pixel_values for `images`, on the model's device and dtype."""
        # On a GPU the processor resizes and normalises there too.
        device_kwargs = {"device": self._device} if self._device.type == "cuda" else {}
        pixels = self.processor(images=list(images), return_tensors="pt", **device_kwargs)["pixel_values"]
        return pixels.to(self._device, dtype=self._dtype, non_blocking=True)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._pool == "clip":
            out = self.model.get_image_features(pixel_values=pixels)
            # transformers 5 returns a model output whose pooler_output is projected.
            features = out if isinstance(out, torch.Tensor) else out.pooler_output
        else:
            hidden = self.model(pixel_values=pixels).last_hidden_state
            features = hidden.mean(dim=1) if self._pool == "mean" else hidden[:, 0]
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def embed(self, images: Sequence[Image.Image], *, one_by_one: bool = False) -> torch.Tensor:
        """One forward pass over `images`, or one per image when `one_by_one` (kernels
        may round differently at other batch sizes; alone, an image's embedding is
        bit-identical whatever it was requested with)."""
        if one_by_one:
            return torch.cat([self.embed_pixels(self.preprocess([image])) for image in images])
        return self.embed_pixels(self.preprocess(images))


def _load(model_id: str, revision: str | None, device: str, dtype: str):
    processor = AutoImageProcessor.from_pretrained(model_id, revision=revision)
    model = AutoModel.from_pretrained(model_id, revision=revision, dtype=TORCH_DTYPES[dtype])
    model = model.to(device).eval()
    # A hub load knows its commit; a local folder is identified by its content hash.
    commit = getattr(model.config, "_commit_hash", None)
    resolved = model_revision(model_id, revision)
    if commit and not resolved.startswith("sha256:"):
        resolved = commit
    return model, processor, LoadedModel(model_id=model_id, revision=resolved, device=device, dtype=dtype)


def load_clip(model_id: str, revision: str | None, device: str, dtype: str) -> ImageEmbedder:
    model, processor, loaded = _load(model_id, revision, device, dtype)
    if not hasattr(model, "get_image_features"):
        raise ValueError(f"clip_model {model_id!r} ({type(model).__name__}) has no get_image_features")
    spec = MetricSpec(
        id=metric_id(CLIP, checkpoint_label(model_id), loaded.revision),
        name=CLIP,
        checkpoint=model_id,
        revision=loaded.revision,
        definition="cosine similarity of the projected image embeddings (get_image_features)",
    )
    return ImageEmbedder(spec, model, processor, loaded, pool="clip")


def load_dinov2(
    model_id: str, revision: str | None, device: str, dtype: str, pooling: Literal["mean", "cls"]
) -> ImageEmbedder:
    model, processor, loaded = _load(model_id, revision, device, dtype)
    pooled = {"mean": "the mean of last_hidden_state over all tokens", "cls": "the CLS token of last_hidden_state"}
    spec = MetricSpec(
        id=metric_id(DINOV2, checkpoint_label(model_id), loaded.revision, pool=pooling),
        name=DINOV2,
        checkpoint=model_id,
        revision=loaded.revision,
        definition=f"cosine similarity of {pooled[pooling]}",
    )
    return ImageEmbedder(spec, model, processor, loaded, pool=pooling)
