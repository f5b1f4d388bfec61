"""A BentoML service over the real scorer whose model load waits for a file to appear
(REGEN_TEST_LOAD_GATE), so a test can watch the service while it loads. Served by
tests/deploy/test_lifecycle.py as `bentoml serve tests/deploy/slow_scorer.py:SlowScorer`."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import bentoml

from regen.common import bento
from regen.scorer.core import ScorerCore
from regen.scorer.grpc_api import DEFINITION
from regen.scorer.settings import ScorerSettings


def _build_when_released(settings: ScorerSettings) -> ScorerCore:
    gate = Path(os.environ["REGEN_TEST_LOAD_GATE"])
    while not gate.exists():
        time.sleep(0.1)
    return DEFINITION.build_core(settings)


@bentoml.service(name="regen-slow-scorer", workers=1)
class SlowScorer(bento.GrpcAlongside[ScorerCore]):
    definition = dataclasses.replace(DEFINITION, build_core=_build_when_released)

    @bentoml.api(input_spec=bento.NoBody)
    async def info(self) -> dict:
        return {"models": [m.model_id for m in self.core.describe().models]}
