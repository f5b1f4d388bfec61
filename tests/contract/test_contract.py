"""The regen.v1 contract compiles, its committed stubs are current, and it has the
methods and fields the parts rely on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO_ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stubs_are_current(tmp_path: Path) -> None:
    generate = _load_generate_module()
    written = generate.generate(tmp_path)
    assert len(written) == 3 * len(generate.proto_files())
    committed_dir = REPO_ROOT / "proto" / "regen" / "v1"
    stale = [
        f.name
        for f in written
        if not (committed_dir / f.name).exists() or (committed_dir / f.name).read_bytes() != f.read_bytes()
    ]
    assert not stale, f"stale stubs {stale}: run `python proto/generate.py`"


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        ("scorer_pb2", "Scorer", {"Info", "Score"}),
        ("generator_pb2", "Generator", {"Info", "Generate"}),
        ("describer_pb2", "Describer", {"Info", "Understand", "WritePrompt", "Variants", "Compare", "Revise", "Judge"}),
    ],
)
def test_services_have_their_methods(module: str, service: str, methods: set[str]) -> None:
    pb2 = importlib.import_module(f"regen.v1.{module}")
    descriptor = pb2.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"regen.v1.{service}"
    assert {m.name for m in descriptor.methods} == methods


def test_generate_streams_images() -> None:
    from regen.v1 import generator_pb2

    method = generator_pb2.DESCRIPTOR.services_by_name["Generator"].methods_by_name["Generate"]
    assert method.server_streaming and not method.client_streaming
    # Unset optional fields mean "model default"; an explicit 0 must stay distinguishable.
    request = generator_pb2.GenerateRequest()
    assert not request.HasField("steps")
    request.steps = 0
    assert request.HasField("steps")


def test_every_info_reports_model_identity() -> None:
    from regen.v1 import describer_pb2, generator_pb2, scorer_pb2

    assert {"model", "server", "prompt_token_budget", "max_batch"} <= set(
        generator_pb2.GeneratorInfo.DESCRIPTOR.fields_by_name
    )
    assert {"models", "server", "metrics", "max_candidates"} <= set(scorer_pb2.ScorerInfo.DESCRIPTOR.fields_by_name)
    assert {"model", "server", "template_version"} <= set(describer_pb2.DescriberInfo.DESCRIPTOR.fields_by_name)


def test_stubs_need_no_torch() -> None:
    import subprocess

    code = (
        "import sys, regen.v1.scorer_pb2_grpc, regen.v1.generator_pb2_grpc, regen.v1.describer_pb2_grpc;"
        "bad=[m for m in ('torch','transformers','diffusers') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
