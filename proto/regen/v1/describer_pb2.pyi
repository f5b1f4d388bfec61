from regen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECT_TYPE_UNSPECIFIED: _ClassVar[ObjectType]
    OBJECT_TYPE_PERSON: _ClassVar[ObjectType]
    OBJECT_TYPE_ANIMAL: _ClassVar[ObjectType]
    OBJECT_TYPE_OBJECT: _ClassVar[ObjectType]
OBJECT_TYPE_UNSPECIFIED: ObjectType
OBJECT_TYPE_PERSON: ObjectType
OBJECT_TYPE_ANIMAL: ObjectType
OBJECT_TYPE_OBJECT: ObjectType

class DescriberInfo(_message.Message):
    __slots__ = ("model", "server", "template_version", "max_variants", "judge_temperature")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_VARIANTS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    server: _common_pb2.ServerInfo
    template_version: str
    max_variants: int
    judge_temperature: float
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., server: _Optional[_Union[_common_pb2.ServerInfo, _Mapping]] = ..., template_version: _Optional[str] = ..., max_variants: _Optional[int] = ..., judge_temperature: _Optional[float] = ...) -> None: ...

class GlobalFeatures(_message.Message):
    __slots__ = ("style", "lighting", "color_palette", "composition")
    STYLE_FIELD_NUMBER: _ClassVar[int]
    LIGHTING_FIELD_NUMBER: _ClassVar[int]
    COLOR_PALETTE_FIELD_NUMBER: _ClassVar[int]
    COMPOSITION_FIELD_NUMBER: _ClassVar[int]
    style: str
    lighting: str
    color_palette: str
    composition: str
    def __init__(self, style: _Optional[str] = ..., lighting: _Optional[str] = ..., color_palette: _Optional[str] = ..., composition: _Optional[str] = ...) -> None: ...

class ObjectAttributes(_message.Message):
    __slots__ = ("color", "material", "position", "texture", "posture", "expression", "clothing", "species", "function", "state")
    COLOR_FIELD_NUMBER: _ClassVar[int]
    MATERIAL_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TEXTURE_FIELD_NUMBER: _ClassVar[int]
    POSTURE_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    CLOTHING_FIELD_NUMBER: _ClassVar[int]
    SPECIES_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    color: str
    material: str
    position: str
    texture: str
    posture: str
    expression: str
    clothing: str
    species: str
    function: str
    state: str
    def __init__(self, color: _Optional[str] = ..., material: _Optional[str] = ..., position: _Optional[str] = ..., texture: _Optional[str] = ..., posture: _Optional[str] = ..., expression: _Optional[str] = ..., clothing: _Optional[str] = ..., species: _Optional[str] = ..., function: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class SceneObject(_message.Message):
    __slots__ = ("name", "type", "attributes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ObjectType
    attributes: ObjectAttributes
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ObjectType, str]] = ..., attributes: _Optional[_Union[ObjectAttributes, _Mapping]] = ...) -> None: ...

class ImageUnderstandingTree(_message.Message):
    __slots__ = ("global_description", "global_features", "objects", "relationships")
    GLOBAL_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_FEATURES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    RELATIONSHIPS_FIELD_NUMBER: _ClassVar[int]
    global_description: str
    global_features: GlobalFeatures
    objects: _containers.RepeatedCompositeFieldContainer[SceneObject]
    relationships: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, global_description: _Optional[str] = ..., global_features: _Optional[_Union[GlobalFeatures, _Mapping]] = ..., objects: _Optional[_Iterable[_Union[SceneObject, _Mapping]]] = ..., relationships: _Optional[_Iterable[str]] = ...) -> None: ...

class CallInfo(_message.Message):
    __slots__ = ("cached", "cache_key", "output_tokens", "elapsed_s", "attempts", "usage", "repairs", "input_tokens", "served_model", "system_fingerprint", "seed")
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    REPAIRS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    cached: bool
    cache_key: str
    output_tokens: int
    elapsed_s: float
    attempts: int
    usage: _common_pb2.Usage
    repairs: int
    input_tokens: int
    served_model: str
    system_fingerprint: str
    seed: int
    def __init__(self, cached: _Optional[bool] = ..., cache_key: _Optional[str] = ..., output_tokens: _Optional[int] = ..., elapsed_s: _Optional[float] = ..., attempts: _Optional[int] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., repairs: _Optional[int] = ..., input_tokens: _Optional[int] = ..., served_model: _Optional[str] = ..., system_fingerprint: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class UnderstandRequest(_message.Message):
    __slots__ = ("image_png",)
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    image_png: bytes
    def __init__(self, image_png: _Optional[bytes] = ...) -> None: ...

class UnderstandResponse(_message.Message):
    __slots__ = ("iut", "call")
    IUT_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    iut: ImageUnderstandingTree
    call: CallInfo
    def __init__(self, iut: _Optional[_Union[ImageUnderstandingTree, _Mapping]] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...

class WritePromptRequest(_message.Message):
    __slots__ = ("iut", "token_budget")
    IUT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    iut: ImageUnderstandingTree
    token_budget: int
    def __init__(self, iut: _Optional[_Union[ImageUnderstandingTree, _Mapping]] = ..., token_budget: _Optional[int] = ...) -> None: ...

class PromptResponse(_message.Message):
    __slots__ = ("prompt", "call")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    call: CallInfo
    def __init__(self, prompt: _Optional[str] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...

class VariantsRequest(_message.Message):
    __slots__ = ("prompt", "n", "token_budget", "seed")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    n: int
    token_budget: int
    seed: int
    def __init__(self, prompt: _Optional[str] = ..., n: _Optional[int] = ..., token_budget: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class VariantsResponse(_message.Message):
    __slots__ = ("prompts", "call")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    call: CallInfo
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("reference_png", "candidate_png", "prompt")
    REFERENCE_PNG_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_PNG_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    reference_png: bytes
    candidate_png: bytes
    prompt: str
    def __init__(self, reference_png: _Optional[bytes] = ..., candidate_png: _Optional[bytes] = ..., prompt: _Optional[str] = ...) -> None: ...

class Difference(_message.Message):
    __slots__ = ("aspect", "description")
    ASPECT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    aspect: str
    description: str
    def __init__(self, aspect: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("differences", "call")
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    differences: _containers.RepeatedCompositeFieldContainer[Difference]
    call: CallInfo
    def __init__(self, differences: _Optional[_Iterable[_Union[Difference, _Mapping]]] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...

class ReviseRequest(_message.Message):
    __slots__ = ("prompt", "differences", "token_budget")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    differences: _containers.RepeatedCompositeFieldContainer[Difference]
    token_budget: int
    def __init__(self, prompt: _Optional[str] = ..., differences: _Optional[_Iterable[_Union[Difference, _Mapping]]] = ..., token_budget: _Optional[int] = ...) -> None: ...

class JudgeRequest(_message.Message):
    __slots__ = ("reference_png", "candidate_png", "seed")
    REFERENCE_PNG_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_PNG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    reference_png: bytes
    candidate_png: bytes
    seed: int
    def __init__(self, reference_png: _Optional[bytes] = ..., candidate_png: _Optional[bytes] = ..., seed: _Optional[int] = ...) -> None: ...

class JudgeResponse(_message.Message):
    __slots__ = ("content_consistency", "perceptual_quality", "rationale", "call")
    CONTENT_CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    PERCEPTUAL_QUALITY_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    content_consistency: int
    perceptual_quality: int
    rationale: str
    call: CallInfo
    def __init__(self, content_consistency: _Optional[int] = ..., perceptual_quality: _Optional[int] = ..., rationale: _Optional[str] = ..., call: _Optional[_Union[CallInfo, _Mapping]] = ...) -> None: ...
