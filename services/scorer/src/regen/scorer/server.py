"""`regen serve scorer`: the scorer as a standalone gRPC process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regen.common.grpc_server import CoreSlot, Registration
from regen.common.serving import run_service
from regen.common.settings import load_settings
from regen.scorer.engine import ScorerEngine
from regen.scorer.scoring import BatchedScorer
from regen.scorer.servicer import SERVICE_NAME, ScorerServicer
from regen.scorer.settings import ScorerSettings
from regen.v1 import scorer_pb2_grpc


def build_engine(settings: ScorerSettings) -> ScorerEngine:
    return ScorerEngine.load(settings)


def registrations(
    slot: CoreSlot[ScorerEngine], settings: ScorerSettings, scorer: BatchedScorer | None = None
) -> list[Registration]:
    """The Scorer servicer; pass `scorer` to share its batcher with another adapter."""
    scorer = scorer or BatchedScorer(slot, settings)
    return [Registration(scorer_pb2_grpc.add_ScorerServicer_to_server, ScorerServicer(scorer), SERVICE_NAME)]


def serve(
    *, port_file: Path | None = None, preset: str | None = None, config_file: str | Path | None = None, **overrides: Any
) -> None:
    settings = load_settings(ScorerSettings, preset=preset, config_file=config_file, **overrides)
    run_service(settings, build_engine, registrations, port_file=port_file)
