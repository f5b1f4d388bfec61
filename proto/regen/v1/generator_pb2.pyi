from regen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GeneratorInfo(_message.Message):
    __slots__ = ("model", "server", "prompt_token_budget", "default_width", "default_height", "default_steps", "default_guidance_scale", "max_batch", "size_multiple", "steps_run", "capabilities")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    SIZE_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    STEPS_RUN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelInfo
    server: _common_pb2.ServerInfo
    prompt_token_budget: int
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    max_batch: int
    size_multiple: int
    steps_run: int
    capabilities: GeneratorCapabilities
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ..., server: _Optional[_Union[_common_pb2.ServerInfo, _Mapping]] = ..., prompt_token_budget: _Optional[int] = ..., default_width: _Optional[int] = ..., default_height: _Optional[int] = ..., default_steps: _Optional[int] = ..., default_guidance_scale: _Optional[float] = ..., max_batch: _Optional[int] = ..., size_multiple: _Optional[int] = ..., steps_run: _Optional[int] = ..., capabilities: _Optional[_Union[GeneratorCapabilities, _Mapping]] = ...) -> None: ...

class ImageSize(_message.Message):
    __slots__ = ("width", "height")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class GeneratorCapabilities(_message.Message):
    __slots__ = ("seeded", "negative_prompt", "sampling_params", "sizes", "max_side")
    SEEDED_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    seeded: bool
    negative_prompt: bool
    sampling_params: bool
    sizes: _containers.RepeatedCompositeFieldContainer[ImageSize]
    max_side: int
    def __init__(self, seeded: _Optional[bool] = ..., negative_prompt: _Optional[bool] = ..., sampling_params: _Optional[bool] = ..., sizes: _Optional[_Iterable[_Union[ImageSize, _Mapping]]] = ..., max_side: _Optional[int] = ...) -> None: ...

class PromptSpec(_message.Message):
    __slots__ = ("text", "negative_prompt", "seed")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    text: str
    negative_prompt: str
    seed: int
    def __init__(self, text: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompts", "width", "height", "steps", "guidance_scale")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[PromptSpec]
    width: int
    height: int
    steps: int
    guidance_scale: float
    def __init__(self, prompts: _Optional[_Iterable[_Union[PromptSpec, _Mapping]]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("index", "png", "seed", "elapsed_s", "prompt_truncated", "prompt_tokens", "refused", "refusal_reason", "width", "height", "model_id", "revision", "usage")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_REASON_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    png: bytes
    seed: int
    elapsed_s: float
    prompt_truncated: bool
    prompt_tokens: int
    refused: bool
    refusal_reason: str
    width: int
    height: int
    model_id: str
    revision: str
    usage: _common_pb2.Usage
    def __init__(self, index: _Optional[int] = ..., png: _Optional[bytes] = ..., seed: _Optional[int] = ..., elapsed_s: _Optional[float] = ..., prompt_truncated: _Optional[bool] = ..., prompt_tokens: _Optional[int] = ..., refused: _Optional[bool] = ..., refusal_reason: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., model_id: _Optional[str] = ..., revision: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ...) -> None: ...
