"""The orchestrator's settings: section `orchestrator` of the config file (`--config FILE`
or REGEN_CONFIG, the file the services read too), REGEN_ORCHESTRATOR_* variables, and
`regen run`'s flags, whose defaults are this model's.

    orchestrator:
      concurrency: 16
      rounds: 3
      generation: {width: 512, height: 512, steps: 30, guidance_scale: 7.5}
      retry: {rpc_timeout_s: 900, outage_budget_s: 300}

Nested values from the environment use a double underscore:
REGEN_ORCHESTRATOR_RETRY__RPC_TIMEOUT_S=900. Precedence, highest first: flags,
environment, config file, defaults. Only some settings change a run's numbers; they are
its identity (`regen.orchestrator.identity`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import NoDecode

from regen.common.settings import SectionSettings, TLSFiles

DEFAULT_SELECTION_WEIGHTS: dict[str, float] = {"clip": 0.5, "dinov2": 0.5}


class GenerationParams(BaseModel):
    """Passed to Generator.Generate; None leaves the model's default (see Generator.Info)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    negative_prompt: str = ""


class RetryPolicy(BaseModel):
    """How calls ride through transient failures.

    UNAVAILABLE (a server loading, restarting or unreachable) and RESOURCE_EXHAUSTED (a
    full queue, a vendor's rate limit) are retried with exponential backoff and full
    jitter for up to `outage_budget_s` from a call's first failure. Nothing else is
    retried: DEADLINE_EXCEEDED means the work itself took too long, and another full
    deadline would only pay for it again; other statuses are answers about the request.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    outage_budget_s: float = Field(120.0, ge=0)
    initial_backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)
    # Deadline of one attempt; it includes the time the request waits in a server's queue.
    rpc_timeout_s: float = Field(600.0, gt=0)

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Pause after failed attempt number `attempt` (1-based): a random fraction of the
        exponential step, so that many cases retrying together spread out."""
        step = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
        return (rng or random).uniform(0, step)


def parse_weights(text: str) -> dict[str, float]:
    """`clip=0.5,dinov2=0.5` -> {"clip": 0.5, "dinov2": 0.5}."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"selection weights {text!r}: expected name=weight pairs, e.g. clip=0.5,dinov2=0.5")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"selection weights {text!r}: {value!r} is not a number") from None
    return weights


class OrchestratorSettings(SectionSettings):
    """What a run is: the dataset, the loop's parameters, where the services are."""

    section: ClassVar[str] = "orchestrator"

    # evalref-100, or a folder of images (optionally with MANIFEST.json).
    dataset: str
    out: Path = Path("runs")
    # Folder name under `out`; default: derived from dataset, generator model, seed and
    # the configuration hash, so the same command always resumes the same run.
    run_name: str | None = None

    # host:port of each service; None starts that service locally (the embedded default).
    describer: str | None = None
    generator: str | None = None
    scorer: str | None = None
    # Settings preset of locally started services (`regen run --preset`).
    service_preset: Literal["tiny", "default"] = "default"
    startup_timeout_s: float = Field(600.0, gt=0)
    # How long to wait for a remote service whose health is NOT_SERVING (still loading).
    connect_timeout_s: float = Field(120.0, gt=0)
    # TLS of the channels to the services: ca_file verifies them; cert_file and key_file
    # are this client's certificate for servers that require mutual TLS.
    tls: TLSFiles = Field(default_factory=TLSFiles)

    rounds: int = Field(3, ge=1, le=100)
    candidates: int = Field(3, ge=1, le=64)
    seed: int = Field(0, ge=0, lt=2**63)
    limit: int | None = Field(None, ge=1)
    # Cases in flight: "auto" admits cases while the generator has fewer than two batches
    # per replica asked for and not received (so it never idles), up to
    # max_cases_in_flight; a number fixes it.
    concurrency: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = "auto"
    max_cases_in_flight: int = Field(256, ge=1)
    # With "auto": cases whose generator-independent steps (understand, first prompt,
    # round 1's variants) run ahead, waiting to be admitted.
    prepare_ahead: int = Field(32, ge=1)
    # Selection score = sum of weight * metric over these scorer metric names; a mapping,
    # or the text form `clip=0.5,dinov2=0.5`.
    selection_weights: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_SELECTION_WEIGHTS)
    )
    generation: GenerationParams = Field(default_factory=GenerationParams)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    # Cases sampled (from the run seed) for the judge's reliability checks: each one's
    # judgement asked again with the images swapped, against an unrelated reference
    # (the control), and, where the judge samples, with another seed: 2 or 3 more Judge
    # calls a case (regen.orchestrator.reliability). 0: none; the variance flags remain.
    judge_checks: int = Field(8, ge=0, le=100_000)

    bootstrap_resamples: int = Field(10_000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    progress: Literal["auto", "rich", "plain", "none"] = "auto"

    @field_validator("selection_weights", mode="before")
    @classmethod
    def _weights_text(cls, weights: Any) -> Any:
        return parse_weights(weights) if isinstance(weights, str) else weights

    @field_validator("selection_weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights:
            raise ValueError("selection_weights: give at least one metric, e.g. clip=0.5,dinov2=0.5")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("selection_weights: weights must be >= 0 with a positive sum")
        return dict(sorted(weights.items()))

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, name: str | None) -> str | None:
        if name is not None and (not name or "/" in name or name in (".", "..")):
            raise ValueError(f"run_name {name!r}: must be a plain folder name")
        return name

    @property
    def embedded(self) -> tuple[str, ...]:
        """Services this run starts itself."""
        return tuple(name for name in ("describer", "generator", "scorer") if getattr(self, name) is None)
