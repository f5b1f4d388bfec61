"""The describer's input checks: each raises InvalidInput whose message starts with the
field ("differences[0].aspect: ..."), before any model call. gRPC and HTTP requests
pass through the same checks, in the core."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from PIL import Image

from regen.common.describer_json import ASPECTS, FEATURES, attributes_of
from regen.common.errors import InvalidInput
from regen.common.images import ImageLimits, decode_image
from regen.describer.answers import Difference, ImageUnderstandingTree
from regen.describer.schemas import MAX_OBJECTS

# A budget below this cannot hold a useful prompt (2 of it are the start and end tokens).
MIN_TOKEN_BUDGET = 8
MAX_TOKEN_BUDGET = 1 << 20
MAX_INPUT_DIFFERENCES = 64
MAX_INPUT_RELATIONSHIPS = 64
# Images smaller than this on a side, or longer than this ratio, are not described.
MIN_IMAGE_SIDE = 8
MAX_ASPECT_RATIO = 50
# Vision models tile images in 28-pixel units; smaller images are scaled up to it.
MIN_MODEL_SIDE = 28


def text(value: str, field: str, max_chars: int, *, required: bool = True) -> str:
    """The text stripped of surrounding spaces; refused when empty (if required) or too long."""
    if required and not value.strip():
        raise InvalidInput(f"{field}: empty; send a non-empty text")
    if len(value) > max_chars:
        raise InvalidInput(f"{field}: {len(value)} characters exceeds the limit of {max_chars}")
    return value.strip()


def token_budget(value: int) -> None:
    if value != 0 and not MIN_TOKEN_BUDGET <= value <= MAX_TOKEN_BUDGET:
        raise InvalidInput(
            f"token_budget: {value} is out of range; use 0 (unlimited) or "
            f"{MIN_TOKEN_BUDGET} to {MAX_TOKEN_BUDGET} tokens"
        )


def variant_count(n: int, max_variants: int) -> None:
    if not 1 <= n <= max_variants:
        raise InvalidInput(f"n: {n} is out of range; ask for 1 to {max_variants} variants")


def differences(values: Sequence[Difference], max_chars: int) -> list[Difference]:
    """At least one difference, each with a known aspect; descriptions stripped."""
    if not values:
        raise InvalidInput("differences: empty; give at least one difference to revise the prompt with")
    if len(values) > MAX_INPUT_DIFFERENCES:
        raise InvalidInput(f"differences: {len(values)} items exceeds the limit of {MAX_INPUT_DIFFERENCES}")
    checked = []
    for index, difference in enumerate(values):
        if difference.aspect not in ASPECTS:
            raise InvalidInput(f"differences[{index}].aspect: {difference.aspect!r} is not one of {', '.join(ASPECTS)}")
        description = text(difference.description, f"differences[{index}].description", max_chars)
        checked.append(Difference(difference.aspect, description))
    return checked


def iut(value: ImageUnderstandingTree, field: str, max_chars: int) -> None:
    """Texts within `max_chars`, the description and names not empty, at most MAX_OBJECTS
    objects, each with only its own type's attributes."""
    text(value.global_description, f"{field}.global_description", max_chars)
    for name in FEATURES:
        text(getattr(value.global_features, name), f"{field}.global_features.{name}", max_chars, required=False)
    if len(value.objects) > MAX_OBJECTS:
        raise InvalidInput(f"{field}.objects: {len(value.objects)} objects exceeds the limit of {MAX_OBJECTS}")
    for index, obj in enumerate(value.objects):
        where = f"{field}.objects[{index}]"
        text(obj.name, f"{where}.name", max_chars)
        allowed = set(attributes_of(obj.type))
        for name, attribute in vars(obj.attributes).items():
            text(attribute, f"{where}.attributes.{name}", max_chars, required=False)
            if attribute and name not in allowed:
                raise InvalidInput(f"{where}.attributes.{name}: not an attribute of type {obj.type}")
    if len(value.relationships) > MAX_INPUT_RELATIONSHIPS:
        raise InvalidInput(
            f"{field}.relationships: {len(value.relationships)} items exceeds the limit of {MAX_INPUT_RELATIONSHIPS}"
        )
    for index, relationship in enumerate(value.relationships):
        text(relationship, f"{field}.relationships[{index}]", max_chars)


def image(data: bytes, field: str, *, max_side: int, limits: ImageLimits) -> tuple[Image.Image, str]:
    """Decode (InvalidInput naming the field on any problem), hash the pixels, and scale
    for the model: longest side at most `max_side`, shortest at least MIN_MODEL_SIDE.
    Returns the scaled image and "sha256:<hex>" of the decoded pixels."""
    decoded = decode_image(data, limits, what=field)
    width, height = decoded.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InvalidInput(
            f"{field}: {width}x{height} is too small to describe; at least {MIN_IMAGE_SIDE} pixels a side"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidInput(f"{field}: {width}x{height} is too elongated; aspect ratio at most {MAX_ASPECT_RATIO}:1")
    digest = hashlib.sha256(f"{width}x{height}:".encode() + decoded.tobytes()).hexdigest()
    scale = min(1.0, max_side / max(width, height))
    scale = max(scale, MIN_MODEL_SIDE / min(width, height))
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        decoded = decoded.resize(size, Image.Resampling.BICUBIC)
    return decoded, "sha256:" + digest
