"""The cosine similarity of image embeddings: what the CLIP and DINOv2 metrics share.

A metric of this kind loads a vision model and its image processor with transformers,
turns images into unit-length float32 vectors, and scores a pair by their dot product.
Reference embeddings are cached by (metric id, sha256 of the reference bytes), so later
rounds of a case only embed their candidates; uncached references and every candidate
of a batch go through the model in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict
from transformers import AutoImageProcessor, AutoModel

from regen.common.identity import model_revision
from regen.scorer.metrics.base import (
    LoadedModel,
    MetricBase,
    MetricContext,
    MetricInfo,
    Pair,
    checkpoint_label,
    metric_id,
)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Hub id or local folder, and the hub revision to pin (None: the hub's default).
    model: str
    revision: str | None = None


class EmbeddingMetric(MetricBase):
    needs_model: ClassVar[bool] = True

    def __init__(
        self,
        info: MetricInfo,
        options: Any,
        network: torch.nn.Module,
        processor: Any,
        loaded: LoadedModel,
        context: MetricContext,
    ) -> None:
        self.info = info
        self.options = options
        self.model = loaded
        self._network: Any = network
        self._processor = processor
        self._device = torch.device(loaded.device)
        self._dtype = TORCH_DTYPES[loaded.dtype]
        self._one_by_one = context.batch_invariant
        self.reference_cache = context.reference_cache

    # Subclasses say what they compute and how to pool the model's output.
    @classmethod
    def definition(cls, options: Any) -> str:
        raise NotImplementedError

    @classmethod
    def id_params(cls, options: Any) -> dict[str, str]:
        """Options that change the values, appended to the metric id (";pool=mean")."""
        return {}

    @classmethod
    def describe(cls, options: Any, checkpoint: str, revision: str) -> MetricInfo:
        return MetricInfo(
            id=metric_id(cls.name, checkpoint_label(checkpoint), revision, **cls.id_params(options)),
            name=cls.name,
            checkpoint=checkpoint,
            revision=revision,
            definition=cls.definition(options),
        )

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def check_model(cls, model: torch.nn.Module, options: Any) -> None:
        """Refuse a checkpoint this metric cannot use (raise ValueError)."""

    @classmethod
    def load(cls, options: Any, context: MetricContext) -> Self:
        model_id, revision = options.model, options.revision
        processor = AutoImageProcessor.from_pretrained(model_id, revision=revision)
        network = AutoModel.from_pretrained(model_id, revision=revision, dtype=TORCH_DTYPES[context.dtype])
        network = network.to(context.device).eval()
        cls.check_model(network, options)
        # A hub load knows its commit; a local folder is identified by its content hash.
        commit = getattr(network.config, "_commit_hash", None)
        resolved = model_revision(model_id, revision)
        if commit and not resolved.startswith("sha256:"):
            resolved = commit
        loaded = LoadedModel(model_id=model_id, revision=resolved, device=context.device, dtype=context.dtype)
        return cls(cls.describe(options, model_id, resolved), options, network, processor, loaded, context)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's pixel_values for `images`, on the model's device and dtype."""
        # On a GPU the processor resizes and normalises there too.
        device_kwargs = {"device": self._device} if self._device.type == "cuda" else {}
        pixels = self._processor(images=list(images), return_tensors="pt", **device_kwargs)["pixel_values"]
        return pixels.to(self._device, dtype=self._dtype, non_blocking=True)

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.features(pixels).float(), dim=-1)

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) unit vectors: one forward pass over `images`, or one per image in
        batch-invariant mode (kernels may round differently at other batch sizes; alone,
        an image's embedding is bit-identical whatever it was requested with)."""
        if self._one_by_one:
            return torch.cat([self.embed_pixels(self.preprocess([image])) for image in images])
        return self.embed_pixels(self.preprocess(images))

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        vectors: dict[str, torch.Tensor] = {}
        to_embed: dict[str, Image.Image] = {}
        for pair in pairs:
            sha = pair.reference.sha256
            if sha in vectors or sha in to_embed:
                continue
            cached = self.reference_cache.get((self.info.id, sha))
            if cached is None:
                to_embed[sha] = pair.reference.image
            else:
                vectors[sha] = cached
        # One forward pass: the uncached references, then every candidate.
        embedded = self.embed([*to_embed.values(), *(pair.candidate for pair in pairs)])
        for row, sha in enumerate(to_embed):
            vectors[sha] = embedded[row].clone()
            self.reference_cache.put((self.info.id, sha), vectors[sha])
        candidates = embedded[len(to_embed) :]
        references = torch.stack([vectors[pair.reference.sha256] for pair in pairs])
        return (candidates * references).sum(dim=-1).clamp(-1.0, 1.0).tolist()


def center_crop_processor(processor_class: Any, *, resize_to: int, crop: int, mean: Any, std: Any) -> Any:
    """An image processor that resizes the short side to `resize_to` (bicubic), crops the
    centre `crop`×`crop`, rescales and normalises: what CLIP and DINOv2 checkpoints ship."""
    from transformers.image_utils import PILImageResampling

    return processor_class(
        do_resize=True,
        size={"shortest_edge": resize_to},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": crop, "width": crop},
        do_rescale=True,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )
