"""`regen serve describer`: the describer as a standalone gRPC process."""

from __future__ import annotations

import logging
from pathlib import Path

from regen.common.grpc_server import CoreSlot, Registration
from regen.common.serving import run_service
from regen.common.settings import load_settings
from regen.describer.cache import AnswerCache, default_cache_dir
from regen.describer.engine import Describer, EngineOptions
from regen.describer.servicer import describer_registration
from regen.describer.settings import DescriberSettings

log = logging.getLogger(__name__)


def build_engine(settings: DescriberSettings) -> Describer:
    """Load the backend (slow) and wrap it in the engine with its cache."""
    from regen.describer.backends.factory import create_backend
    from regen.describer.budget import token_counter

    backend = create_backend(settings)
    cache = None
    if settings.cache_enabled:
        cache = AnswerCache(Path(settings.cache_dir or default_cache_dir()).expanduser())
    engine = Describer(
        backend,
        EngineOptions.from_settings(settings),
        cache=cache,
        token_counter=token_counter(settings.budget_tokenizer),
    )
    identity = backend.identity
    log.info(
        "describer ready: backend %s, model %s (%s) on %s, templates %s, cache %s",
        identity.backend,
        identity.model_id,
        identity.revision,
        identity.device,
        engine.template_version,
        cache.root if cache else "off",
    )
    return engine


def registrations(slot: CoreSlot[Describer], settings: DescriberSettings) -> list[Registration]:
    return [describer_registration(slot)]


def serve(*, port_file: Path | None = None, preset: str | None = None, config_file=None, **overrides) -> None:
    settings = load_settings(DescriberSettings, preset=preset, config_file=config_file, **overrides)
    run_service(settings, build_engine, registrations, port_file=port_file, close_core=lambda e: e.aclose())
