from regen.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricInfo(_message.Message):
    __slots__ = ("id", "name", "checkpoint", "revision", "definition", "higher_is_better")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    checkpoint: str
    revision: str
    definition: str
    higher_is_better: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., checkpoint: _Optional[str] = ..., revision: _Optional[str] = ..., definition: _Optional[str] = ..., higher_is_better: _Optional[bool] = ...) -> None: ...

class ScorerInfo(_message.Message):
    __slots__ = ("models", "server", "metrics", "max_candidates")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelInfo]
    server: _common_pb2.ServerInfo
    metrics: _containers.RepeatedCompositeFieldContainer[MetricInfo]
    max_candidates: int
    def __init__(self, models: _Optional[_Iterable[_Union[_common_pb2.ModelInfo, _Mapping]]] = ..., server: _Optional[_Union[_common_pb2.ServerInfo, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[MetricInfo, _Mapping]]] = ..., max_candidates: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("reference_png", "candidate_pngs", "metrics")
    REFERENCE_PNG_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_PNGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    reference_png: bytes
    candidate_pngs: _containers.RepeatedScalarFieldContainer[bytes]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reference_png: _Optional[bytes] = ..., candidate_pngs: _Optional[_Iterable[bytes]] = ..., metrics: _Optional[_Iterable[str]] = ...) -> None: ...

class CandidateScores(_message.Message):
    __slots__ = ("index", "scores")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    index: int
    scores: _containers.ScalarMap[str, float]
    def __init__(self, index: _Optional[int] = ..., scores: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateScores]
    def __init__(self, candidates: _Optional[_Iterable[_Union[CandidateScores, _Mapping]]] = ...) -> None: ...
