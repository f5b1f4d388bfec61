"""How every regen part reads its settings, from (highest first): explicit values (CLI
flags), environment variables, a YAML config file, then a preset.

Each part owns its settings class (`regen.scorer.settings.ScorerSettings`, ...); this
module holds only what they share: the base classes, the layering and the presets.

Environment variables are prefixed per part: REGEN_SCORER_DEVICE=cuda,
REGEN_GENERATOR_MODEL=stabilityai/sdxl-turbo, REGEN_DESCRIBER_BACKEND=openai, ...
The config file (`--config FILE` or REGEN_CONFIG) has one section per part:

    generator:
      model: stabilityai/stable-diffusion-xl-base-1.0
      dtype: float16
    scorer:
      device: cuda

A section or key that no part knows is an error naming it, never ignored.

Presets: `default` uses the real checkpoints; `tiny` uses the random-weight models
that `regen tiny-models` builds (in REGEN_TINY_MODELS, or ~/.cache/regen/tiny-models),
on the CPU, at sizes that make a whole run take seconds. Each settings class says what
the tiny preset means for it (`tiny_preset`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

from regen.common.images import ImageLimits

PRESETS: tuple[str, ...] = ("tiny", "default")
# The sections a config file may have: one per part.
SECTIONS: tuple[str, ...] = ("describer", "generator", "scorer", "orchestrator")


def tiny_models_dir() -> Path:
    env = os.environ.get("REGEN_TINY_MODELS")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "regen" / "tiny-models"


class ImageLimitSettings(BaseModel):
    max_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_pixels: int = Field(4096 * 4096, gt=0)

    def limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)


class TLSFiles(BaseModel):
    """TLS by file paths (PEM). A server with `cert_file` and `key_file` serves TLS only;
    with `ca_file` too it requires client certificates signed by that CA (mutual TLS). A
    client verifies servers with `ca_file` (default: the system's roots) and presents
    `cert_file` and `key_file` when a server asks for a client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    # Clients only: on (default: off) even without any file, to reach a server with a
    # publicly trusted certificate.
    enabled: bool = False

    @model_validator(mode="after")
    def _pairs(self) -> TLSFiles:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: give cert_file and key_file together")
        return self

    @property
    def configured(self) -> bool:
        return self.enabled or any(path is not None for path in (self.cert_file, self.key_file, self.ca_file))


class SectionSettings(BaseSettings):
    """The settings of one part: one section of the config file, one env prefix."""

    section: ClassVar[str] = ""
    # allow_inf_nan=False: no setting is NaN or infinite (a NaN weight or timeout would
    # fail late, far from the option that set it).
    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid", allow_inf_nan=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Each part's variables are REGEN_<SECTION>_<FIELD> (nested fields joined by "__").
        if cls.section:
            cls.model_config["env_prefix"] = f"REGEN_{cls.section.upper()}_"

    @classmethod
    def preset(cls, name: str) -> dict[str, Any]:
        """The values preset `name` sets for this part."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.tiny_preset(tiny_models_dir()) if name == "tiny" else {}

    @classmethod
    def tiny_preset(cls, models: Path) -> dict[str, Any]:
        """Values of the tiny preset; `models` is where `regen tiny-models` built them."""
        return {}


class ServiceSettings(SectionSettings):
    """What every model service has: where it listens, where it runs, its limits."""

    # Only this machine can connect unless configured otherwise (0.0.0.0 in a container).
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    # TLS of the gRPC server: cert_file and key_file, plus ca_file for mutual TLS.
    tls: TLSFiles = Field(default_factory=TLSFiles)
    # "auto": cuda when available, else cpu.
    device: str = "auto"
    # "auto": float16 on cuda, float32 on cpu.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_message_bytes: int = Field(256 * 1024 * 1024, gt=0)
    # Connections end after this long (calls in flight get as long again to finish), so
    # clients re-resolve a DNS name and spread over replicas that started since.
    max_connection_age_s: float = Field(300.0, gt=0)
    # Port of the Prometheus /metrics endpoint of `regen serve` (unset: none; under
    # BentoML the metrics are on its HTTP port's /metrics).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    images: ImageLimitSettings = Field(default_factory=ImageLimitSettings)
    # Batching across concurrent requests.
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    max_queue: int = Field(1024, ge=1)
    # Threads torch may use on the CPU; 0 leaves torch's default. Pinning makes CPU
    # results bit-exact across runs.
    cpu_threads: int = Field(0, ge=0)

    @classmethod
    def tiny_preset(cls, models: Path) -> dict[str, Any]:
        # One thread: bit-exact CPU results across runs, and no oversubscription when the
        # three services share a small machine.
        return {"device": "cpu", "dtype": "float32", "cpu_threads": 1}


def read_config_file(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ValueError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the config file must be a mapping of sections")
    unknown = sorted(str(key) for key in data if key not in SECTIONS)
    if unknown:
        raise ValueError(f"{p}: unknown section {unknown[0]!r}; the sections are {', '.join(SECTIONS)}")
    for name, section in data.items():
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"{p}: section {name!r} must be a mapping of settings")
    return data


def _check_file_keys(cls: type[SectionSettings], values: dict[str, Any], path: object) -> None:
    unknown = sorted(str(key) for key in values if key not in cls.model_fields)
    if unknown:
        raise ValueError(
            f"{path}: unknown setting {cls.section}.{unknown[0]}; "
            f"{cls.section} has {', '.join(sorted(cls.model_fields))}"
        )


S = TypeVar("S", bound=SectionSettings)


def load_settings(
    cls: type[S],
    *,
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> S:
    """Build settings with precedence overrides > env > config file > preset > defaults.

    `preset` and `config_file` fall back to REGEN_PRESET and REGEN_CONFIG."""
    preset = preset or os.environ.get("REGEN_PRESET") or "default"
    config_file = config_file or os.environ.get("REGEN_CONFIG") or None  # empty means none
    preset_layer = cls.preset(preset)
    file_layer = read_config_file(config_file).get(cls.section) or {}
    _check_file_keys(cls, file_layer, config_file)
    overrides = {k: v for k, v in overrides.items() if v is not None}

    class Configured(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(
            cls_, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ):
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=dict(file_layer)),
                InitSettingsSource(settings_cls, init_kwargs=dict(preset_layer)),
            )

    Configured.__name__ = cls.__name__
    Configured.__qualname__ = cls.__qualname__
    return Configured(**overrides)


def resolve_device(device: str) -> str:
    """`auto` -> cuda if torch sees a GPU, else cpu. `cuda` or `cuda:N` is checked here and
    raises RuntimeError with CUDA's own reason when it is not usable: a GPU deployment names
    cuda so that a broken driver stops the service instead of benchmarking on the CPU.
    Imports torch only when asked."""
    if device != "auto" and not device.startswith("cuda"):
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.cuda.init()  # raises with the driver's reason (none found, too old, ...)
        count = torch.cuda.device_count()
    except Exception as exc:
        count, reason = 0, f"{type(exc).__name__}: {exc}"
    else:
        reason = "no GPU is visible (CUDA_VISIBLE_DEVICES, the container's GPU request?)"
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise RuntimeError(
            f"device {device!r}: CUDA is not usable here, and the setting names cuda, so the "
            f"service stops instead of running on the CPU: {reason if count == 0 else f'only {count} GPUs'}. "
            f"torch {torch.__version__} is built for CUDA {torch.version.cuda}: the NVIDIA driver must "
            "support that CUDA version (docs/deployment.md)"
        )
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "float16" if device.startswith("cuda") else "float32"
