"""regen.v1 messages <-> the engine's values. Every IUT field maps both ways."""

from __future__ import annotations

from regen.common.errors import InvalidInput
from regen.describer.answers import (
    ATTRIBUTE_NAMES,
    Difference,
    GlobalFeatures,
    ImageUnderstandingTree,
    ObjectAttributes,
    SceneObject,
)
from regen.describer.engine import CallReport
from regen.v1 import describer_pb2

_TYPE_TO_PROTO = {
    "person": describer_pb2.OBJECT_TYPE_PERSON,
    "animal": describer_pb2.OBJECT_TYPE_ANIMAL,
    "object": describer_pb2.OBJECT_TYPE_OBJECT,
}
_TYPE_FROM_PROTO = {value: key for key, value in _TYPE_TO_PROTO.items()}


def iut_to_proto(iut: ImageUnderstandingTree) -> describer_pb2.ImageUnderstandingTree:
    features = iut.global_features
    return describer_pb2.ImageUnderstandingTree(
        global_description=iut.global_description,
        global_features=describer_pb2.GlobalFeatures(
            style=features.style,
            lighting=features.lighting,
            color_palette=features.color_palette,
            composition=features.composition,
        ),
        objects=[
            describer_pb2.SceneObject(
                name=obj.name,
                type=_TYPE_TO_PROTO[obj.type],
                attributes=describer_pb2.ObjectAttributes(
                    **{name: getattr(obj.attributes, name) for name in ATTRIBUTE_NAMES}
                ),
            )
            for obj in iut.objects
        ],
        relationships=list(iut.relationships),
    )


def iut_from_proto(message: describer_pb2.ImageUnderstandingTree, field: str = "iut") -> ImageUnderstandingTree:
    """Raises InvalidInput naming the field for what the proto cannot rule out itself."""
    objects = []
    for index, obj in enumerate(message.objects):
        if obj.type not in _TYPE_FROM_PROTO:
            known = obj.type in describer_pb2.ObjectType.values()
            name = describer_pb2.ObjectType.Name(obj.type) if known else str(obj.type)
            raise InvalidInput(f"{field}.objects[{index}].type: {name} is not person, animal or object")
        attributes = ObjectAttributes(**{name: getattr(obj.attributes, name) for name in ATTRIBUTE_NAMES})
        objects.append(SceneObject(name=obj.name, type=_TYPE_FROM_PROTO[obj.type], attributes=attributes))
    features = message.global_features
    return ImageUnderstandingTree(
        global_description=message.global_description,
        global_features=GlobalFeatures(
            style=features.style,
            lighting=features.lighting,
            color_palette=features.color_palette,
            composition=features.composition,
        ),
        objects=tuple(objects),
        relationships=tuple(message.relationships),
    )


def differences_to_proto(differences: list[Difference]) -> list[describer_pb2.Difference]:
    return [describer_pb2.Difference(aspect=d.aspect, description=d.description) for d in differences]


def differences_from_proto(messages) -> list[Difference]:
    return [Difference(aspect=m.aspect, description=m.description) for m in messages]


def call_info(report: CallReport) -> describer_pb2.CallInfo:
    return describer_pb2.CallInfo(
        cached=report.cached,
        cache_key=report.cache_key,
        output_tokens=report.output_tokens,
        elapsed_s=report.elapsed_s,
        attempts=report.attempts,
    )


def iut_from_json(data: object, field: str = "iut") -> ImageUnderstandingTree:
    """The JSON form (`ImageUnderstandingTree.to_json`, as the HTTP API uses it) to an IUT;
    raises InvalidInput naming the field for anything of the wrong shape."""
    record = _mapping(data, field)
    features = _mapping(record.get("global_features", {}), f"{field}.global_features")
    objects = []
    for index, item in enumerate(_sequence(record.get("objects", []), f"{field}.objects")):
        where = f"{field}.objects[{index}]"
        obj = _mapping(item, where)
        kind = obj.get("type")
        if kind not in _TYPE_TO_PROTO:
            raise InvalidInput(f"{where}.type: {kind!r} is not person, animal or object")
        attributes = _mapping(obj.get("attributes", {}), f"{where}.attributes")
        unknown = sorted(set(attributes) - set(ATTRIBUTE_NAMES))
        if unknown:
            raise InvalidInput(f"{where}.attributes: unknown attribute {unknown[0]!r}")
        objects.append(
            SceneObject(
                name=_string(obj.get("name", ""), f"{where}.name"),
                type=kind,
                attributes=ObjectAttributes(
                    **{k: _string(v, f"{where}.attributes.{k}") for k, v in attributes.items()}
                ),
            )
        )
    return ImageUnderstandingTree(
        global_description=_string(record.get("global_description", ""), f"{field}.global_description"),
        global_features=GlobalFeatures(
            **{
                name: _string(features.get(name, ""), f"{field}.global_features.{name}")
                for name in ("style", "lighting", "color_palette", "composition")
            }
        ),
        objects=tuple(objects),
        relationships=tuple(
            _string(r, f"{field}.relationships[{i}]")
            for i, r in enumerate(_sequence(record.get("relationships", []), f"{field}.relationships"))
        ),
    )


def differences_from_json(data: object, field: str = "differences") -> list[Difference]:
    out = []
    for index, item in enumerate(_sequence(data, field)):
        record = _mapping(item, f"{field}[{index}]")
        out.append(
            Difference(
                aspect=_string(record.get("aspect", ""), f"{field}[{index}].aspect"),
                description=_string(record.get("description", ""), f"{field}[{index}].description"),
            )
        )
    return out


def _mapping(value: object, field: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{field}: expected an object, got {type(value).__name__}")
    return value


def _sequence(value: object, field: str) -> list:
    if not isinstance(value, list):
        raise InvalidInput(f"{field}: expected a list, got {type(value).__name__}")
    return value


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected a string, got {type(value).__name__}")
    return value
