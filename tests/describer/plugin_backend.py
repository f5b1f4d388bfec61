"""A describer backend from outside the describer: the whole of what a new backend is
(test_describer_extension.py registers it through a faked entry point). It answers every
task with a fixed valid answer."""

from __future__ import annotations

import json

from regen.common.batching import BatchStats
from regen.describer.backends.base import BackendIdentity, Completion, ModelCall
from regen.describer.settings import DescriberSettings

ANSWERS = {
    "judge": {"rationale": "the same apple", "content_consistency": 4, "perceptual_quality": 5},
    "write_prompt": {"prompt": "red apple, wooden table"},
    "revise": {"prompt": "red apple, wooden table"},
}


class FixedBackend:
    def __init__(self, model: str) -> None:
        self.identity = BackendIdentity(backend="fixed", model_id=model, revision="1", device="none", dtype="")
        self._stats = BatchStats()

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> FixedBackend:
        return cls(settings.model)

    async def complete(self, call: ModelCall) -> Completion:
        self._stats.items += 1
        return Completion(text=json.dumps(ANSWERS[call.schema_name]), output_tokens=8)

    def stats(self) -> BatchStats:
        return self._stats

    async def aclose(self) -> None:
        return None
