"""What every describer backend takes and returns.

A backend turns one chat (system, user, maybe a failed answer and a repair request) with
images and a JSON schema into text. It knows nothing of tasks, caching or validation.
A new backend is one module with a class that satisfies `Backend`, plus its line in
`backends/__init__.py` (or an entry point in the group "regen.describer.backends").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from PIL import Image

from regen.common import metrics
from regen.common.batching import BatchStats

if TYPE_CHECKING:
    from typing import Self

    from regen.describer.settings import DescriberSettings

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    # Text and images in order; images are RGB, already resized for the model.
    parts: tuple[str | Image.Image, ...]

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))


@dataclass(frozen=True, eq=False)
class ModelCall:
    messages: tuple[Message, ...]
    # JSON schema the answer must follow; None: unconstrained (benchmarks).
    schema: dict[str, Any] | None
    schema_name: str
    max_new_tokens: int
    # 0: greedy. Otherwise sampled with `seed`, reproducibly. Every call carries a seed,
    # greedy ones too (an API may not decode greedily at temperature 0).
    temperature: float = 0.0
    seed: int = 0
    # Benchmarks force a fixed output length; answers never need it.
    min_new_tokens: int = 0

    @property
    def images(self) -> list[Image.Image]:
        return [image for message in self.messages for image in message.images]


@dataclass(frozen=True)
class Completion:
    text: str
    output_tokens: int
    # The answer hit the token limit before it ended.
    truncated: bool = False
    # Tokens of the chat the model read (the API's prompt_tokens; counted by a local
    # backend); 0 when unknown.
    input_tokens: int = 0
    # Remote API requests this completion took (1 for an API backend, 0 for a local model).
    api_calls: int = 0
    # The model that answered as its server names it (an API's `model`: the dated snapshot
    # behind an alias), and the API's system_fingerprint; empty when not given.
    served_model: str = ""
    system_fingerprint: str = ""
    # The model declined to answer (an API's message.refusal): its words.
    refusal: str = ""


@dataclass(frozen=True)
class BackendIdentity:
    backend: str
    model_id: str
    revision: str
    device: str
    dtype: str
    # Anything else that changes answers for the same model and revision (e.g. the
    # API endpoint); part of the cache key, not of ModelInfo.
    extra: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    identity: BackendIdentity

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> Self:
        """Build the backend from the describer's settings (slow: loads weights, starts
        an engine or opens a client); raise on what it cannot use."""
        ...

    async def complete(self, call: ModelCall) -> Completion: ...

    def stats(self) -> BatchStats: ...

    async def aclose(self) -> None: ...


class CallCounter:
    """Stats for backends that run each call on their own (remote APIs, vLLM): one
    'batch' per call, busy time is the time calls were outstanding."""

    def __init__(self) -> None:
        self.stats = BatchStats()

    def record(self, started: float) -> None:
        busy = time.monotonic() - started
        self.stats.busy_s += busy
        self.stats.batches += 1
        self.stats.items += 1
        metrics.BUSY_SECONDS.labels("describer").inc(busy)
        metrics.ITEMS.labels("describer").inc()
        metrics.BATCH_SIZE.labels("describer").observe(1)
