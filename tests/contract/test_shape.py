"""The one shape every service has (docs/architecture.md): a transport-free core, and
adapters that load no model library until the core is built."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVICES = {"describer": "backends", "generator": "engines", "scorer": "metrics"}


def imported(modules: list[str], candidates: list[str]) -> list[str]:
    """Which of `candidates` a fresh interpreter has loaded after importing `modules`."""
    code = (
        f"import json, sys\nfor m in {modules!r}: __import__(m)\n"
        f"print(json.dumps([m for m in {candidates!r} if m in sys.modules]))"
    )
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_core_and_the_extension_protocol_import_no_transport(service: str) -> None:
    modules = [f"regen.{service}.core", f"regen.{service}.settings", f"regen.{service}.{SERVICES[service]}.base"]
    assert imported(modules, ["grpc", "bentoml", "torch", "transformers", "diffusers"]) == []


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_http_adapter_module_loads_no_model_library(service: str) -> None:
    # BentoML imports the service module in its supervisor process too, which never
    # serves a request: torch there would only hold memory.
    assert imported([f"regen.{service}.http_api"], ["torch", "transformers", "diffusers", "vllm"]) == []
