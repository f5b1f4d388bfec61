"""What a run is: the dataset, the loop's parameters, where the services are.

Only some fields change results (`RESULT_FIELDS`); they form the run's identity, which
is hashed into run.json so that a resume into the same folder with a different
configuration is refused instead of silently mixing results.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_SELECTION_WEIGHTS: dict[str, float] = {"clip": 0.5, "dinov2": 0.5}

# Fields whose value changes a run's numbers; everything else (addresses, concurrency,
# timeouts, progress style) may differ between a run and its resume.
RESULT_FIELDS: tuple[str, ...] = (
    "rounds",
    "candidates",
    "seed",
    "limit",
    "selection_weights",
    "generation",
    "bootstrap_resamples",
    "confidence",
)


class GenerationParams(BaseModel):
    """Passed to Generator.Generate; None leaves the model's default (see Generator.Info)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None
    negative_prompt: str = ""


class RetryPolicy(BaseModel):
    """Bounded retries with exponential backoff, on UNAVAILABLE and DEADLINE_EXCEEDED only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(4, ge=1)
    initial_backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(8.0, ge=0)
    # Deadline of one call; it includes the time the request waits in a server's queue.
    rpc_timeout_s: float = Field(600.0, gt=0)

    def backoff_s(self, attempt: int) -> float:
        """Pause after failed attempt number `attempt` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    out: Path = Path("runs")
    # Folder name under `out`; default: derived from dataset, generator model, seed and
    # the configuration hash, so the same command always resumes the same run.
    run_name: str | None = None

    # host:port of each service; None starts that service locally (the embedded default).
    describer: str | None = None
    generator: str | None = None
    scorer: str | None = None
    # Settings preset and config file for locally started services.
    preset: Literal["tiny", "default"] = "default"
    service_config: Path | None = None
    startup_timeout_s: float = Field(600.0, gt=0)
    # How long to wait for a remote service whose health is NOT_SERVING (still loading).
    connect_timeout_s: float = Field(120.0, gt=0)

    rounds: int = Field(3, ge=1, le=100)
    candidates: int = Field(3, ge=1, le=64)
    seed: int = Field(0, ge=0, lt=2**63)
    limit: int | None = Field(None, ge=1)
    concurrency: int = Field(8, ge=1, le=1024)
    # Selection score = sum of weight * metric over these scorer metric names.
    selection_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SELECTION_WEIGHTS))
    generation: GenerationParams = Field(default_factory=GenerationParams)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    bootstrap_resamples: int = Field(10_000, ge=100)
    confidence: float = Field(0.95, gt=0, lt=1)
    progress: Literal["auto", "rich", "plain", "none"] = "auto"

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

    def result_config(self) -> dict[str, Any]:
        """The part of the configuration that determines the numbers."""
        data = self.model_dump(mode="json")
        return {key: data[key] for key in RESULT_FIELDS}

    @property
    def embedded(self) -> tuple[str, ...]:
        """Services this run starts itself."""
        return tuple(name for name in ("describer", "generator", "scorer") if getattr(self, name) is None)


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


def stable_hash(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys), for identities that must survive restarts."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
