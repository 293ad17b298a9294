"""deploy/k8s, the kustomize base and its component, checked without a cluster.

The manifests are read as written (PyYAML; kustomize is not needed) and checked for what the
deployment relies on: probes, resources, the security context, the autoscalers, headless
Services, the references between objects and to the code's settings, and that no secret
value is committed. Every resource is then validated against the Kubernetes OpenAPI schema
(kubernetes-validate, strict) of the oldest supported version and of the newest it knows.
Where kubectl is installed, `kubectl kustomize` also builds the base and the component.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from facescore.cli import build_parser
from facescore.settings_doc import SERVICES
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
COMPONENT = K8S / "components" / "models-pvc"
# grpc probes are GA from 1.27; validated against it and against the newest schema known.
OLDEST_KUBERNETES = "1.27.0"
IMAGE = "facescore"
UID = 10001
GRPC_SERVICES = ("detect", "embed", "score")
SERVICES_OF_DEPLOYMENTS = ("detect", "embed", "score", "gateway")
AUTOSCALED = ("detect", "embed")
HEADLESS = ("detect", "embed", "score")


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def kustomization() -> dict[str, Any]:
    (doc,) = load_yaml(K8S / "kustomization.yaml")
    return doc


@cache
def resources() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file, resource) for every document of every file the base lists."""
    return tuple(
        (name, doc) for name in kustomization()["resources"] for doc in load_yaml(K8S / name)
    )


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in resources() if doc["kind"] == kind}


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(deployment name, pod spec, container) for every container of every Deployment."""
    for name, deployment in of_kind("Deployment").items():
        pod = pod_spec(deployment)
        for container in pod["containers"]:
            yield name, pod, container


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize's `envs:` reads them (# comments, blank lines)."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            entries[key.strip()] = value
    return entries


def settings_env_names() -> dict[str, Any]:
    """Every environment variable a facescore service reads -> its pydantic field."""
    names = {}
    for _, settings in SERVICES:
        prefix = str(settings.model_config.get("env_prefix", ""))
        for field_name, field in settings.model_fields.items():
            names[f"{prefix}{field_name.upper()}"] = field
    return names


def generated(kind: str) -> dict[str, dict[str, Any]]:
    key = {"ConfigMap": "configMapGenerator", "Secret": "secretGenerator"}[kind]
    return {entry["name"]: entry for entry in kustomization().get(key, [])}


# --- the kustomization ---------------------------------------------------------------------


def test_every_listed_file_exists_and_every_manifest_is_listed() -> None:
    listed = kustomization()["resources"]
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    manifests = {p.name for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml"}
    assert manifests == set(listed), f"manifests not in resources: {manifests - set(listed)}"
    for entry in generated("ConfigMap").values():
        for name in entry["envs"]:
            assert (K8S / name).is_file(), f"{entry['name']} reads {name}, which does not exist"
    # secrets.env is the operator's own copy: the template is what the repository holds.
    for entry in generated("Secret").values():
        for name in entry["envs"]:
            assert (K8S / f"{name}.example").is_file(), f"{name}.example does not exist"


def test_every_resource_is_named_once() -> None:
    seen: set[tuple[str, str]] = set()
    for name, doc in resources():
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{name}: {key} defined twice"
        seen.add(key)


def test_image_is_set_by_kustomize_and_used_everywhere() -> None:
    (entry,) = kustomization()["images"]
    assert entry["name"] == IMAGE
    # The base keeps the name, so that an overlay's `images:` can still match it.
    assert "newName" not in entry
    for name, _, container in containers():
        assert container["image"] == IMAGE, f"{name}: image {container['image']}"


def test_each_container_runs_its_own_service() -> None:
    for name, _, container in containers():
        assert "command" not in container, f"{name}: keep the image's entrypoint (facescore)"
        args = build_parser().parse_args(container["args"])
        assert (args.command, args.service) == ("serve", name)


# --- probes, resources, security ---------------------------------------------------------


def container_of(deployment: str) -> dict[str, Any]:
    (container,) = pod_spec(of_kind("Deployment")[deployment])["containers"]
    assert container["name"] == deployment
    return container


def default_port(service: str) -> int:
    """The port `facescore serve SERVICE` listens on by default (its settings class)."""
    return int(settings_env_names()[f"{service.upper()}_PORT"].default)


def test_every_deployment_is_one_of_ours() -> None:
    assert set(of_kind("Deployment")) == set(SERVICES_OF_DEPLOYMENTS)


def test_every_container_has_readiness_and_liveness_probes() -> None:
    for name, _, container in containers():
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{name} has no {probe}"


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_grpc_services_use_native_grpc_probes_on_their_port(service: str) -> None:
    container = container_of(service)
    port = default_port(service)
    assert {"name": "grpc", "containerPort": port} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port}, f"{service} {probe}"
    # Model loading (or waiting for detect and embed) gets minutes, not the liveness budget.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_gateway_ready_on_health_alive_without_dependencies() -> None:
    container = container_of("gateway")
    assert {"name": "http", "containerPort": default_port("gateway")} in container["ports"]
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert (readiness["path"], readiness["port"]) == ("/api/health", "http")
    # /api/health fails while Qdrant or detect is down: liveness must not restart for that.
    assert liveness["path"] == "/api/health/live"
    assert liveness["port"] == "http"


def test_every_container_has_requests_and_limits() -> None:
    for name, _, container in containers():
        resources_ = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resource in resources_.get(part, {}), f"{name}: no {resource} {part}"


def effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    return container.get("securityContext", {}).get(key, pod.get("securityContext", {}).get(key))


def test_every_container_runs_locked_down() -> None:
    for name, pod, container in containers():
        assert effective(pod, container, "runAsNonRoot") is True, name
        assert effective(pod, container, "runAsUser") == UID, name
        assert effective(pod, container, "seccompProfile") == {"type": "RuntimeDefault"}, name
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in context["capabilities"], name
        assert context.get("privileged", False) is False, name
        assert pod["automountServiceAccountToken"] is False, name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host), f"{name}: {host}"


def test_tmp_is_a_writable_empty_dir() -> None:
    for name, pod, container in containers():
        volumes = {v["name"]: v for v in pod["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[mount["name"]], name
        assert not mount.get("readOnly"), name


def test_namespace_enforces_the_restricted_pod_security_standard() -> None:
    (namespace,) = of_kind("Namespace").values()
    assert namespace["metadata"]["name"] == kustomization()["namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


# --- scaling: autoscalers and headless Services ------------------------------------------


@pytest.mark.parametrize("service", AUTOSCALED)
def test_cpu_autoscaler_targets_the_deployment(service: str) -> None:
    hpa = of_kind("HorizontalPodAutoscaler")[service]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == service
    assert target["name"] in of_kind("Deployment")
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"


def test_autoscaled_deployments_leave_the_replica_count_alone() -> None:
    # A replicas field would be re-applied over the autoscaler's choice on every apply.
    for hpa in of_kind("HorizontalPodAutoscaler").values():
        deployment = of_kind("Deployment")[hpa["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def test_every_deployment_has_a_disruption_budget() -> None:
    budgets = of_kind("PodDisruptionBudget")
    for name, deployment in of_kind("Deployment").items():
        budget = budgets[name]
        assert budget["spec"]["selector"] == deployment["spec"]["selector"], name


@pytest.mark.parametrize("service", HEADLESS)
def test_grpc_services_are_headless(service: str) -> None:
    # round_robin over dns:/// needs every pod's address, not one virtual IP.
    spec = of_kind("Service")[service]["spec"]
    assert spec.get("clusterIP") == "None", f"Service {service} must be headless (clusterIP: None)"


def test_services_select_their_pods_and_name_their_ports() -> None:
    deployments = of_kind("Deployment")
    for name, service in of_kind("Service").items():
        selector = service["spec"].get("selector")
        if selector is None:
            continue  # metrics-not-public: no endpoints on purpose
        (deployment,) = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= selector.items()
        (container,) = pod_spec(deployment)["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name}: no container port {port}"
            assert port["port"] == ports[port["targetPort"]], f"Service {name}: {port}"


def test_deployment_selectors_match_their_pods() -> None:
    for name, deployment in of_kind("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


# --- settings, ConfigMap and Secret --------------------------------------------------------


@cache
def config() -> dict[str, str]:
    (entry,) = generated("ConfigMap").values()
    (envs,) = entry["envs"]
    return read_env_file(K8S / envs)


def test_config_holds_only_real_settings() -> None:
    known = settings_env_names()
    for key in config():
        assert key in known, f"config.properties: {key} is no facescore setting"


def test_services_listen_on_every_interface() -> None:
    for service in SERVICES_OF_DEPLOYMENTS:
        assert config()[f"{service.upper()}_HOST"] == "0.0.0.0"


@pytest.mark.parametrize(
    ("setting", "service"),
    [
        ("SCORE_DETECT_TARGET", "detect"),
        ("SCORE_EMBED_TARGET", "embed"),
        ("GATEWAY_SCORE_TARGET", "score"),
    ],
)
def test_grpc_targets_name_the_headless_services(setting: str, service: str) -> None:
    match = re.fullmatch(r"dns:///(?P<host>[a-z0-9-]+):(?P<port>\d+)", config()[setting])
    assert match, f"{setting}={config()[setting]}: expected dns:///SERVICE:PORT"
    assert match["host"] == service
    ports = [p["port"] for p in of_kind("Service")[service]["spec"]["ports"]]
    assert int(match["port"]) in ports
    assert int(match["port"]) == default_port(service)


def test_score_uses_a_qdrant_server() -> None:
    # Unset, score would keep an embedded Qdrant in each pod's /tmp.
    assert config()["SCORE_QDRANT_URL"].startswith(("http://", "https://"))


def test_references_to_the_config_map_and_secret_exist() -> None:
    config_maps, secrets = generated("ConfigMap"), generated("Secret")
    (secret_entry,) = secrets.values()
    (secret_file,) = secret_entry["envs"]
    secret_keys = read_env_file(K8S / f"{secret_file}.example")
    for name, _, container in containers():
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps, name
            assert "secretRef" not in source, f"{name}: secrets go in key by key"
        for variable in container.get("env", []):
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secrets, name
            assert ref["key"] in secret_keys, f"{name}: {ref['key']} not in {secret_file}.example"
            assert variable["name"] == ref["key"]
            assert variable["name"].startswith(f"{name.upper()}_"), "each gets its own only"


def test_secret_template_lists_secret_settings_without_values() -> None:
    (entry,) = generated("Secret").values()
    assert "literals" not in entry, "secret values must not be written in kustomization.yaml"
    (secret_file,) = entry["envs"]
    template = read_env_file(K8S / f"{secret_file}.example")
    known = settings_env_names()
    assert template, "the secret template lists no key"
    for key, value in template.items():
        assert key in known, f"{secret_file}.example: {key} is no facescore setting"
        assert value == "", f"{secret_file}.example: {key} has a value"
        assert key not in config(), f"{key} is both in the ConfigMap and the Secret"


def test_no_secret_value_is_committed() -> None:
    (entry,) = generated("Secret").values()
    (secret_file,) = entry["envs"]
    relative = f"deploy/k8s/{secret_file}"
    patterns = [
        line.strip().lstrip("/")
        for line in (REPO / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} must be git-ignored"
    git = shutil.which("git")
    if git is not None and (REPO / ".git").exists():
        tracked = subprocess.run(
            [git, "ls-files", "deploy/k8s"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.split()
        assert relative not in tracked, f"{relative} is committed"
    for path in K8S.rglob("*.y*ml"):
        for doc in load_yaml(path):
            if doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), f"{path}: Secret data"


# --- the Ingress --------------------------------------------------------------------------


def test_ingress_serves_https_to_the_gateway_and_keeps_metrics_inside() -> None:
    (ingress,) = of_kind("Ingress").values()
    services = of_kind("Service")
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in tls["hosts"]
    paths = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    assert paths["/"]["name"] == "gateway"
    assert paths["/"]["port"]["name"] in [p["name"] for p in services["gateway"]["spec"]["ports"]]
    blocked = services[paths["/metrics"]["name"]]
    assert "selector" not in blocked["spec"], "/metrics must lead to no pod"


# --- the models-pvc component -------------------------------------------------------------


def test_models_component_mounts_its_claim_read_only_into_detect_and_embed() -> None:
    (component,) = load_yaml(COMPONENT / "kustomization.yaml")
    assert component["kind"] == "Component"
    claims = {
        doc["metadata"]["name"]: doc
        for name in component["resources"]
        for doc in load_yaml(COMPONENT / name)
        if doc["kind"] == "PersistentVolumeClaim"
    }
    (patch,) = component["patches"]
    targets = [n for n in of_kind("Deployment") if re.search(patch["target"]["name"], n)]
    assert sorted(targets) == ["detect", "embed"]
    operations = {op["path"]: op["value"] for op in yaml.safe_load(patch["patch"])}
    volume = operations["/spec/template/spec/volumes/-"]
    mount = operations["/spec/template/spec/containers/0/volumeMounts/-"]
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    assert mount["name"] == volume["name"]
    assert mount["readOnly"] is True
    # The folder the image's DETECT_MODEL_DIR and EMBED_MODEL_DIR name.
    assert mount["mountPath"] == "/app/public/models"
    dockerfile = (REPO / "Dockerfile").read_text()
    for setting in ("DETECT_MODEL_DIR", "EMBED_MODEL_DIR"):
        assert f"{setting}={mount['mountPath']}" in dockerfile


# --- schema -------------------------------------------------------------------------------


def schema_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every complete resource: the base's files and the component's resources."""
    for name, doc in resources():
        yield K8S / name, doc
    (component,) = load_yaml(COMPONENT / "kustomization.yaml")
    for name in component["resources"]:
        for doc in load_yaml(COMPONENT / name):
            yield COMPONENT / name, doc


def validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: it belongs to the dev dependencies "
            "(uv sync), and checks deploy/k8s against the Kubernetes schema"
        )
    return kubernetes_validate


def test_manifests_match_the_kubernetes_schema() -> None:
    kubernetes_validate = validator()
    problems = []
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        for path, doc in schema_documents():
            what = f"{path.relative_to(REPO)} {doc['kind']}/{doc['metadata']['name']} ({version})"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{what}: {error.message} at {'.'.join(map(str, error.path))}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{what}: no such kind in Kubernetes {version}")
    assert not problems, "\n".join(problems)


def test_the_schema_check_catches_a_mistake() -> None:
    kubernetes_validate = validator()
    deployment = of_kind("Deployment")["detect"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


# --- kustomize itself, where kubectl is installed -----------------------------------------


@pytest.fixture
def kustomize_tree(tmp_path: Path) -> Path:
    """A copy of deploy/k8s with secrets.env made from its template, plus an overlay."""
    base = tmp_path / "k8s"
    shutil.copytree(K8S, base, ignore=shutil.ignore_patterns("*.env"))
    (entry,) = generated("Secret").values()
    for name in entry["envs"]:
        shutil.copy(K8S / f"{name}.example", base / name)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../k8s"],
                "components": ["../k8s/components/models-pvc"],
                "images": [{"name": IMAGE, "newName": "registry.example.com/facescore"}],
            }
        )
    )
    return tmp_path


def kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not run (the other tests ran)")
    built = subprocess.run(
        [kubectl, "kustomize", str(folder)], check=False, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def test_kubectl_kustomize_builds_the_base(kustomize_tree: Path) -> None:
    built = kustomize(kustomize_tree / "k8s")
    namespace = kustomization()["namespace"]
    generated_names = {d["metadata"]["name"] for d in built if d["kind"] in ("ConfigMap", "Secret")}
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "facescore"
        if doc["kind"] == "Deployment":
            (container,) = doc["spec"]["template"]["spec"]["containers"]
            assert container["image"] == f"{IMAGE}:{kustomization()['images'][0]['newTag']}"
            # The generated, hash-suffixed names are what the pods refer to.
            refs = [s["configMapRef"]["name"] for s in container["envFrom"]]
            refs += [v["valueFrom"]["secretKeyRef"]["name"] for v in container.get("env", [])]
            assert set(refs) <= generated_names, refs


def test_kubectl_kustomize_builds_an_overlay_with_the_models_component(
    kustomize_tree: Path,
) -> None:
    built = kustomize(kustomize_tree / "overlay")
    claims = [doc for doc in built if doc["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["namespace"] for c in claims] == [kustomization()["namespace"]]
    for doc in built:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["image"].startswith("registry.example.com/facescore:")
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert ("/app/public/models" in mounts) == (doc["metadata"]["name"] in AUTOSCALED)
