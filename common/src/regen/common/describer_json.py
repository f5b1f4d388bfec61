"""The one JSON form of the describer's messages (the Image Understanding Tree and the
differences), used in iut.json, in the metadata files and by the describer's HTTP API.

It is the shape of the JSON schemas the describer validates its model's answers
against: object types are "person", "animal" or "object" (never protobuf enum names),
and each object carries exactly the attributes of its own type:

    {"global_description": "...",
     "global_features": {"style": "...", "lighting": "...", "color_palette": "...", "composition": "..."},
     "objects": [{"name": "...", "type": "person",
                  "attributes": {"color": "...", "material": "...", "position": "...", "texture": "...",
                                 "posture": "...", "expression": "...", "clothing": "..."}}],
     "relationships": ["..."]}

Reading refuses anything else (unknown keys, another type's attributes, wrong types)
with InvalidInput naming the field. Missing texts read as empty; whether an empty text
is acceptable is the describer's decision, as it is for the same message over gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from regen.common.errors import InvalidInput
from regen.v1 import describer_pb2

OBJECT_TYPES: tuple[str, ...] = ("person", "animal", "object")
COMMON_ATTRIBUTES: tuple[str, ...] = ("color", "material", "position", "texture")
TYPE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "person": ("posture", "expression", "clothing"),
    "animal": ("species", "posture", "expression"),
    "object": ("function", "state"),
}
FEATURES: tuple[str, ...] = ("style", "lighting", "color_palette", "composition")
ASPECTS: tuple[str, ...] = ("style", "composition", "content")

_TYPE_TO_PROTO = {
    "person": describer_pb2.OBJECT_TYPE_PERSON,
    "animal": describer_pb2.OBJECT_TYPE_ANIMAL,
    "object": describer_pb2.OBJECT_TYPE_OBJECT,
}
_TYPE_FROM_PROTO: dict[int, str] = {int(value): key for key, value in _TYPE_TO_PROTO.items()}


def attributes_of(object_type: str) -> tuple[str, ...]:
    """The attributes an object of this type has, common ones first."""
    return COMMON_ATTRIBUTES + TYPE_ATTRIBUTES[object_type]


def object_type_name(value: int, field: str) -> str:
    """A proto ObjectType as its JSON name; InvalidInput for UNSPECIFIED or unknown values."""
    name = _TYPE_FROM_PROTO.get(value)
    if name is None:
        known = value in describer_pb2.ObjectType.values()
        label = describer_pb2.ObjectType.Name(value) if known else str(value)
        raise InvalidInput(f"{field}: {label} is not person, animal or object")
    return name


def iut_to_json(iut: describer_pb2.ImageUnderstandingTree, field: str = "iut") -> dict[str, Any]:
    features = iut.global_features
    objects = []
    for index, obj in enumerate(iut.objects):
        kind = object_type_name(obj.type, f"{field}.objects[{index}].type")
        objects.append(
            {
                "name": obj.name,
                "type": kind,
                "attributes": {name: getattr(obj.attributes, name) for name in attributes_of(kind)},
            }
        )
    return {
        "global_description": iut.global_description,
        "global_features": {name: getattr(features, name) for name in FEATURES},
        "objects": objects,
        "relationships": list(iut.relationships),
    }


def iut_from_json(data: object, field: str = "iut") -> describer_pb2.ImageUnderstandingTree:
    record = _mapping(data, field, ("global_description", "global_features", "objects", "relationships"))
    features = _mapping(record.get("global_features", {}), f"{field}.global_features", FEATURES)
    objects = []
    for index, item in enumerate(_sequence(record.get("objects", []), f"{field}.objects")):
        where = f"{field}.objects[{index}]"
        obj = _mapping(item, where, ("name", "type", "attributes"))
        kind = obj.get("type")
        if kind not in _TYPE_TO_PROTO:
            raise InvalidInput(f"{where}.type: {kind!r} is not person, animal or object")
        attributes = _mapping(obj.get("attributes", {}), f"{where}.attributes", attributes_of(kind))
        objects.append(
            describer_pb2.SceneObject(
                name=_string(obj.get("name", ""), f"{where}.name"),
                type=_TYPE_TO_PROTO[kind],
                attributes=describer_pb2.ObjectAttributes(
                    **{name: _string(value, f"{where}.attributes.{name}") for name, value in attributes.items()}
                ),
            )
        )
    return describer_pb2.ImageUnderstandingTree(
        global_description=_string(record.get("global_description", ""), f"{field}.global_description"),
        global_features=describer_pb2.GlobalFeatures(
            **{name: _string(value, f"{field}.global_features.{name}") for name, value in features.items()}
        ),
        objects=objects,
        relationships=[
            _string(text, f"{field}.relationships[{i}]")
            for i, text in enumerate(_sequence(record.get("relationships", []), f"{field}.relationships"))
        ],
    )


def differences_to_json(differences: Iterable[describer_pb2.Difference]) -> list[dict[str, str]]:
    return [{"aspect": d.aspect, "description": d.description} for d in differences]


def differences_from_json(data: object, field: str = "differences") -> list[describer_pb2.Difference]:
    out = []
    for index, item in enumerate(_sequence(data, field)):
        where = f"{field}[{index}]"
        record = _mapping(item, where, ("aspect", "description"))
        out.append(
            describer_pb2.Difference(
                aspect=_string(record.get("aspect", ""), f"{where}.aspect"),
                description=_string(record.get("description", ""), f"{where}.description"),
            )
        )
    return out


def _mapping(value: object, field: str, allowed: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{field}: expected an object, got {type(value).__name__}")
    allowed = tuple(allowed)
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise InvalidInput(f"{field}.{unknown[0]}: unknown field; {field} has {', '.join(allowed)}")
    return value


def _sequence(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{field}: expected a list, got {type(value).__name__}")
    return value


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected a string, got {type(value).__name__}")
    return value
