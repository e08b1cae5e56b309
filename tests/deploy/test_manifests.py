"""deploy/ manifests: valid against their schemas, and consistent with the image and the server.

Kubernetes objects are validated offline with kubernetes-validate's strict schemas (unknown fields
are errors, as under `kubectl apply --validate=strict`) for Kubernetes ``K8S_VERSION``. The KServe
ServingRuntime and InferenceService are validated with jsonschema against the CRD schemas vendored in
tests/deploy/schemas (README there: source commit, trimming, strictness). Then the manifests are
checked against each other, the Dockerfile and the server's settings: ports, probe paths, args,
environment, user, volumes, grace period, autoscaling target, image.
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from server.metrics import ServerMetrics
from server.settings import ServerSettings
from tests.support.deploy_facts import (
    K8S_DIR,
    KSERVE_DIR,
    LIVE_PATH,
    READY_PATH,
    REPO,
    Stage,
    dockerfile_stages,
    env_settings,
    exec_form,
    find,
    manifests,
    project,
    serve_options,
    setting_default,
)

K8S_VERSION = "1.30"
SCHEMAS = Path(__file__).parent / "schemas"
KSERVE_SCHEMAS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): (
        SCHEMAS / "servingruntimes.serving.kserve.io.v1alpha1.yaml"
    ),
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        SCHEMAS / "inferenceservices.serving.kserve.io.v1beta1.yaml"
    ),
}
K8S_FILES = [path for path, _ in manifests(K8S_DIR)]
KSERVE_FILES = [path for path, _ in manifests(KSERVE_DIR)]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- schema validation ------------------------------------------------------------------------------


def validate_k8s(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def strict(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever the CRD lists properties (see schemas/README)."""
    if isinstance(schema, dict):
        out = {key: strict(value) for key, value in schema.items()}
        open_ended = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in out and not open_ended:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


@functools.cache
def kserve_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = strict(yaml.safe_load(KSERVE_SCHEMAS[(api_version, kind)].read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_kserve(doc: dict[str, Any]) -> None:
    errors = sorted(kserve_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc), key=str)
    if errors:
        raise jsonschema.ValidationError(
            "; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        )
    # A CRD's metadata is ObjectMeta, which the API server checks itself: check it with Kubernetes' schema.
    validate_k8s({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]})


@pytest.mark.parametrize("path", K8S_FILES, ids=rel)
def test_kubernetes_objects_are_schema_valid(path: Path) -> None:
    docs = list(manifests(path.parent, recursive=False))
    for file, doc in docs:
        if file == path:
            validate_k8s(doc)


@pytest.mark.parametrize("path", KSERVE_FILES, ids=rel)
def test_kserve_objects_are_schema_valid(path: Path) -> None:
    for file, doc in manifests(KSERVE_DIR):
        if file == path:
            assert (doc["apiVersion"], doc["kind"]) in KSERVE_SCHEMAS
            validate_kserve(doc)


def test_expected_objects_are_present() -> None:
    kinds = sorted(doc["kind"] for _, doc in manifests(K8S_DIR, recursive=False))
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget",
         "Service"]
    )  # fmt: skip
    assert find("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    kserve = sorted(doc["kind"] for _, doc in manifests(KSERVE_DIR))
    assert kserve == ["InferenceService", "ServingRuntime"]


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of doc with the dotted path (list indices as numbers) set to value."""
    out = copy.deepcopy(doc)
    node: Any = out
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.template.spec.terminationGracePeriodSecond", 60),  # misspelt field
        ("spec.template.spec.containers.0.ports.0.containerPort", "8000"),  # wrong type
        ("spec.template.spec.containers.0.readinessProbe.httpGet.paths", "/v2/health/ready"),
        ("spec.template.spec.containers.0.resources.request", {"cpu": "2"}),
    ],
)
def test_kubernetes_validation_rejects_a_broken_deployment(path: str, value: Any) -> None:
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(_set(find("Deployment"), path, value))


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("ServingRuntime", "spec.multiModel", "no"),  # wrong type
        ("ServingRuntime", "spec.containers.0.imagePullPolicyy", "Always"),  # misspelt container field
        ("ServingRuntime", "spec.supportedModelFormats.0.priority", 0),  # below the CRD minimum
        ("ServingRuntime", "spec.protocolVersion", ["v2"]),  # the field is protocolVersions
        ("ServingRuntime", "spec.containers.0.ports.0", {"port": 8080}),  # containerPort required
        ("ServingRuntime", "metadata.labels", {"app": 3}),  # ObjectMeta label values are strings
        ("InferenceService", "spec.predictor.scaleMetric", "gpu"),  # not in the CRD enum
        ("InferenceService", "spec.predictor.model.storageURI", "pvc://x/"),  # misspelt
        ("InferenceService", "spec.predictor.model.modelFormat", {"version": "1"}),  # name required
        ("InferenceService", "spec.predictor.minReplicas", "1"),  # wrong type
    ],
)
def test_kserve_validation_rejects_a_broken_object(kind: str, path: str, value: Any) -> None:
    doc = next(doc for _, doc in manifests(KSERVE_DIR) if doc["kind"] == kind)
    validate_kserve(doc)  # the original is valid ...
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate_kserve(_set(doc, path, value))  # ... the broken copy is not


def test_kserve_object_without_its_required_parts_is_rejected() -> None:
    runtime = find("ServingRuntime", KSERVE_DIR)
    broken = copy.deepcopy(runtime)
    del broken["spec"]["containers"]
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(broken)
    service = find("InferenceService", KSERVE_DIR)
    broken = copy.deepcopy(service)
    del broken["spec"]["predictor"]
    with pytest.raises(jsonschema.ValidationError):
        validate_kserve(broken)


# --- consistency with the image and the server ------------------------------------------------------


@pytest.fixture(scope="module")
def final_stage() -> Stage:
    return dockerfile_stages()[-1]


def pod_spec() -> dict[str, Any]:
    return find("Deployment")["spec"]["template"]["spec"]


def server_container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def runtime_container() -> dict[str, Any]:
    containers = find("ServingRuntime", KSERVE_DIR)["spec"]["containers"]
    assert [c["name"] for c in containers] == ["kserve-container"]
    return containers[0]


def effective_settings(args: list[str], env: dict[str, str], repository: Path) -> ServerSettings:
    """What the server would make of these args and DDRNET_* variables (args win, as on the CLI)."""
    given = {**env_settings(env), **serve_options(args)}
    given["model_repository"] = str(repository)  # the container path does not exist here
    return ServerSettings(**given)


def quantity_cpus(value: str | int) -> float:
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_deployment_runs_the_images_command_and_options(final_stage: Stage, tmp_path: Path) -> None:
    container = server_container()
    assert container.get("command") is None, "the image ENTRYPOINT (tini -- ddrnet serve) must stay"
    assert container["args"] == exec_form(final_stage.last("CMD").value)
    config = find("ConfigMap")
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    env = dict(config["data"])
    settings = effective_settings(container["args"], env, tmp_path)  # types and ranges checked here
    assert settings.http_port == setting_default("http_port")
    assert settings.grpc_port == setting_default("grpc_port")
    # the token comes from a Secret, never from the ConfigMap
    assert "DDRNET_AUTH_TOKEN" not in env
    token = {e["name"]: e for e in container["env"]}["DDRNET_AUTH_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True


def test_workers_fit_the_cpu_request() -> None:
    env = find("ConfigMap")["data"]
    cpus = quantity_cpus(server_container()["resources"]["requests"]["cpu"])
    threads = int(env["DDRNET_INSTANCES"]) * int(env["DDRNET_THREADS_PER_INSTANCE"])
    assert threads <= cpus, f"{threads} runtime threads on a {cpus}-CPU request"
    assert int(env["DDRNET_PREPROCESS_WORKERS"]) <= max(2, cpus)


def test_ports_probes_and_service_match(final_stage: Stage) -> None:
    container = server_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    exposed = {int(p) for e in final_stage.all("EXPOSE") for p in e.value.split()}
    assert ports == {"http": setting_default("http_port"), "grpc": setting_default("grpc_port")}
    assert set(ports.values()) == exposed

    def probe_target(name: str) -> tuple[str, int]:
        get = container[name]["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        return get["path"], port

    assert probe_target("readinessProbe") == (READY_PATH, ports["http"])
    assert probe_target("livenessProbe") == (LIVE_PATH, ports["http"])
    assert probe_target("startupProbe") == (LIVE_PATH, ports["http"])

    service = find("Service")
    labels = find("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert find("Deployment")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports, f"Service port {port['name']} targets no container port"
        assert port["port"] == ports[port["targetPort"]]
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc"}


def test_prometheus_scrapes_the_metrics_endpoint() -> None:
    annotations = find("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == setting_default("http_port")
    assert annotations["prometheus.io/path"] == "/metrics"


def test_graceful_termination_outlasts_the_drain() -> None:
    spec = pod_spec()
    drain = float(find("ConfigMap")["data"]["DDRNET_SHUTDOWN_TIMEOUT_S"])
    pre_stop = server_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain
    isvc = find("InferenceService", KSERVE_DIR)["spec"]["predictor"]
    runtime_env = {e["name"]: e["value"] for e in runtime_container()["env"]}
    assert isvc["terminationGracePeriodSeconds"] > float(runtime_env["DDRNET_SHUTDOWN_TIMEOUT_S"])


def test_security_context_matches_the_image_user(final_stage: Stage) -> None:
    uid, _, gid = final_stage.last("USER").value.partition(":")
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == int(uid) and pod["runAsGroup"] == int(gid or uid)
    for container in (server_container(), runtime_container()):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
    assert runtime_container()["securityContext"]["runAsUser"] == int(uid)


def test_writable_paths_are_volumes_when_the_root_filesystem_is_read_only(final_stage: Stage) -> None:
    """HOME, /tmp and /dev/shm must be mounts, or the server cannot write there."""
    env = dict(re.findall(r"([A-Z_]+)=(\S+)", " ".join(e.value for e in final_stage.all("ENV"))))
    needed = {env["HOME"], "/tmp", "/dev/shm"}
    for container, volumes in (
        (server_container(), pod_spec()["volumes"]),
        (runtime_container(), find("ServingRuntime", KSERVE_DIR)["spec"]["volumes"]),
    ):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        by_name = {v["name"]: v for v in volumes}
        assert needed <= set(mounts), f"not mounted: {sorted(needed - set(mounts))}"
        for path in needed:
            assert not mounts[path].get("readOnly"), f"{path} is mounted read-only"
            assert "emptyDir" in by_name[mounts[path]["name"]]
        assert by_name[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
        for mount in container["volumeMounts"]:
            assert mount["name"] in by_name, f"mount {mount['name']} has no volume"


def test_model_repository_volume() -> None:
    mounts = {m["mountPath"]: m for m in server_container()["volumeMounts"]}
    models = mounts[serve_options(server_container()["args"])["model_repository"]]
    assert models["readOnly"] is True
    volume = {v["name"]: v for v in pod_spec()["volumes"]}[models["name"]]
    claim = find("PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    storage_uri = find("InferenceService", KSERVE_DIR)["spec"]["predictor"]["model"]["storageUri"]
    assert storage_uri.rstrip("/") == f"pvc://{claim['metadata']['name']}"


def test_autoscalers_target_the_deployment() -> None:
    deployment = find("Deployment")
    assert "replicas" not in deployment["spec"], "replicas belong to the HPA; a fixed count fights it"
    assert "cpu" in server_container()["resources"]["requests"], "CPU utilisation needs a CPU request"
    hpas = [doc for _, doc in manifests(K8S_DIR) if doc["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 2
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"], target["name"]) == (
            "apps/v1", "Deployment", deployment["metadata"]["name"]
        )
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    cpu = find("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert cpu[0]["resource"]["name"] == "cpu"
    custom = next(h for h in hpas if h["spec"]["metrics"][0]["type"] == "Pods")
    metric = custom["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exported = {family.name for family in ServerMetrics().registry.collect()}
    assert metric in exported, f"{metric} is not a metric the server exports"


def test_kustomization_lists_every_base_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


def test_kserve_runtime_serves_the_storage_initializer_mount(tmp_path: Path) -> None:
    container = runtime_container()
    assert container.get("command") is None
    options = serve_options(container["args"])
    assert options["model_repository"] == "/mnt/models"
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = effective_settings(container["args"], env, tmp_path)
    assert [p["containerPort"] for p in container["ports"]] == [settings.http_port]
    for name, path in (("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)):
        get = container[name]["httpGet"]
        assert (get["path"], get["port"]) == (path, settings.http_port)
    spec = find("ServingRuntime", KSERVE_DIR)["spec"]
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    assert int(spec["annotations"]["prometheus.kserve.io/port"]) == settings.http_port
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"


def test_inference_service_uses_the_runtime() -> None:
    runtime = find("ServingRuntime", KSERVE_DIR)
    predictor = find("InferenceService", KSERVE_DIR)["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert predictor["minReplicas"] <= predictor["maxReplicas"]


def test_one_image_tagged_with_the_project_version() -> None:
    version = project()["project"]["version"]
    images = {server_container()["image"], runtime_container()["image"]}
    assert images == {f"ddrnet-serve:{version}"}


def test_command_lines_parse_with_the_real_serve_cli(final_stage: Stage) -> None:
    """The image CMD and the manifests' args are accepted by `ddrnet serve`'s own argument parser."""
    from cli import serve as serve_cli

    parser = argparse.ArgumentParser(prog="ddrnet serve", exit_on_error=False)
    serve_cli.add_arguments(parser)
    command_lines = {
        "Dockerfile CMD": exec_form(final_stage.last("CMD").value),
        "Deployment args": server_container()["args"],
        "ServingRuntime args": runtime_container()["args"],
    }
    for where, args in command_lines.items():
        try:
            parsed = parser.parse_args(args)
        except (argparse.ArgumentError, SystemExit) as exc:
            pytest.fail(f"{where} rejected by ddrnet serve: {args} ({exc})")
        for key, value in serve_options(args).items():
            assert str(getattr(parsed, key)) == value, f"{where}: --{key} parsed as {getattr(parsed, key)!r}"


def test_export_job_runs_the_train_image_on_the_shared_repository() -> None:
    """The Kubernetes Job example: the train target's image (entrypoint `ddrnet`) exports a run into the
    ddrnet-models volume the serving pods read; its arguments parse with the real `ddrnet export`."""
    from cli import export as cli_export
    from tests.support.deploy_facts import dockerfile_stages

    [job] = [doc for _, doc in manifests(K8S_DIR / "extras") if doc["kind"] == "Job"]
    version = project()["project"]["version"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ddrnet-serve:{version}-train" and container.get("command") is None
    train = {s.alias: s for s in dockerfile_stages()}["train"]
    assert exec_form(train.last("ENTRYPOINT").value) == ["tini", "--", "ddrnet"]
    assert container["args"][0] == "export"
    parser = argparse.ArgumentParser(prog="ddrnet export")
    cli_export.add_arguments(parser)
    args = parser.parse_args(container["args"][1:])
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert str(args.repository) == "/models" and not mounts["/models"].get("readOnly")
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "ddrnet-models"
    assert str(args.run_dir).startswith("/runs/") and mounts["/runs"]["readOnly"] is True
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001
