"""regen.v1 messages <-> the core's values. Every IUT field maps both ways.

The HTTP API reaches the same values through the same functions: its JSON (the one form
of `regen.common.describer_json`) is read into these messages first."""

from __future__ import annotations

from collections.abc import Iterable

from regen.common.describer_json import FEATURES, iut_from_json, object_type_name
from regen.describer.answers import (
    ATTRIBUTE_NAMES,
    Difference,
    GlobalFeatures,
    ImageUnderstandingTree,
    ObjectAttributes,
    SceneObject,
)
from regen.describer.core import CallReport
from regen.v1 import common_pb2, describer_pb2


def iut_to_proto(iut: ImageUnderstandingTree) -> describer_pb2.ImageUnderstandingTree:
    return iut_from_json(iut.to_json())


def iut_from_proto(message: describer_pb2.ImageUnderstandingTree, field: str = "iut") -> ImageUnderstandingTree:
    """Raises InvalidInput naming the field for what the proto cannot rule out itself (an
    unspecified object type). Every attribute is kept: the core refuses another type's."""
    objects = tuple(
        SceneObject(
            name=obj.name,
            type=object_type_name(obj.type, f"{field}.objects[{index}].type"),
            attributes=ObjectAttributes(**{name: getattr(obj.attributes, name) for name in ATTRIBUTE_NAMES}),
        )
        for index, obj in enumerate(message.objects)
    )
    return ImageUnderstandingTree(
        global_description=message.global_description,
        global_features=GlobalFeatures(**{name: getattr(message.global_features, name) for name in FEATURES}),
        objects=objects,
        relationships=tuple(message.relationships),
    )


def differences_to_proto(differences: Iterable[Difference]) -> list[describer_pb2.Difference]:
    return [describer_pb2.Difference(aspect=d.aspect, description=d.description) for d in differences]


def differences_from_proto(messages: Iterable[describer_pb2.Difference]) -> list[Difference]:
    return [Difference(aspect=m.aspect, description=m.description) for m in messages]


def call_info(report: CallReport) -> describer_pb2.CallInfo:
    return describer_pb2.CallInfo(
        cached=report.cached,
        cache_key=report.cache_key,
        output_tokens=report.output_tokens,
        elapsed_s=report.elapsed_s,
        attempts=report.attempts,
        usage=common_pb2.Usage(
            api_calls=report.usage.api_calls,
            retries=report.usage.retries,
            input_tokens=report.usage.input_tokens,
            output_tokens=report.usage.output_tokens,
        ),
        repairs=report.repairs,
        input_tokens=report.input_tokens,
        served_model=report.served_model,
        system_fingerprint=report.system_fingerprint,
        seed=report.seed,
    )
