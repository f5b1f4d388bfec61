"""The describer's answers as plain values, and their JSON form (the schemas' shape)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from regen.common.describer_json import FEATURES, attributes_of


@dataclass(frozen=True)
class ObjectAttributes:
    color: str = ""
    material: str = ""
    position: str = ""
    texture: str = ""
    posture: str = ""
    expression: str = ""
    clothing: str = ""
    species: str = ""
    function: str = ""
    state: str = ""


ATTRIBUTE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ObjectAttributes))


@dataclass(frozen=True)
class SceneObject:
    name: str
    type: str  # person, animal or object
    attributes: ObjectAttributes = field(default_factory=ObjectAttributes)


@dataclass(frozen=True)
class GlobalFeatures:
    style: str = ""
    lighting: str = ""
    color_palette: str = ""
    composition: str = ""


@dataclass(frozen=True)
class ImageUnderstandingTree:
    global_description: str
    global_features: GlobalFeatures
    objects: tuple[SceneObject, ...]
    relationships: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The schema's shape: each object carries only its own type's attributes."""
        return {
            "global_description": self.global_description,
            "global_features": asdict(self.global_features),
            "objects": [
                {
                    "name": obj.name,
                    "type": obj.type,
                    "attributes": {name: getattr(obj.attributes, name) for name in attributes_of(obj.type)},
                }
                for obj in self.objects
            ],
            "relationships": list(self.relationships),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageUnderstandingTree:
        """From a schema-valid value; strings are stripped of surrounding spaces."""
        features = data["global_features"]
        return cls(
            global_description=data["global_description"].strip(),
            global_features=GlobalFeatures(**{name: features[name].strip() for name in FEATURES}),
            objects=tuple(
                SceneObject(
                    name=obj["name"].strip(),
                    type=obj["type"],
                    attributes=ObjectAttributes(**{k: v.strip() for k, v in obj["attributes"].items()}),
                )
                for obj in data["objects"]
            ),
            relationships=tuple(r.strip() for r in data["relationships"]),
        )


@dataclass(frozen=True)
class Difference:
    aspect: str  # style, composition or content
    description: str


@dataclass(frozen=True)
class Judgement:
    content_consistency: int
    perceptual_quality: int
    rationale: str


def compose_draft(iut: ImageUnderstandingTree) -> str:
    """The IUT as one comma-separated draft, most important first: what the MLLM then
    rewrites into the first prompt."""
    parts = [iut.global_description.rstrip(".")]
    for obj in iut.objects:
        details = [value for name in attributes_of(obj.type) if (value := getattr(obj.attributes, name))]
        parts.append(f"{obj.name} ({', '.join(details)})" if details else obj.name)
    parts.extend(iut.relationships)
    features = iut.global_features
    parts.extend(
        f"{label}: {value}"
        for label, value in (
            ("style", features.style),
            ("lighting", features.lighting),
            ("colors", features.color_palette),
            ("composition", features.composition),
        )
        if value
    )
    return ", ".join(p for p in parts if p)
