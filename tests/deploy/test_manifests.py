"""Offline checks of the cluster deployment (deploy/): Kubernetes manifests, Containerfiles.

No cluster and no Docker engine here, so the manifests are validated against the Kubernetes
OpenAPI schemas shipped by `kubernetes-validate`, the custom resources (KEDA) structurally,
and everything is cross-checked: selectors, volumes, the agent/worker socket contract (taken
from the agent's own code), the partitions, the autoscaling metrics, and the command lines,
which are parsed by the real `pyarmonik` CLI.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from pyarmonik.cli import main as cli
from pyarmonik.compute import agent as agent_module
from pyarmonik.storage.factory import open_backends, open_database, open_objects, open_queue

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30.0"  # a version whose schemas kubernetes-validate ships
NAMESPACE = "armonik"
# API groups of resources that are not in the Kubernetes schemas (checked structurally).
NON_CORE_GROUPS = {"keda.sh", "kustomize.config.k8s.io"}
POD_IP = "192.0.2.10"  # stands for $(POD_IP); nothing connects to it
WORKER_ADDRESS = "ComputePlane__WorkerChannel__Address"
AGENT_ADDRESS = "ComputePlane__AgentChannel__Address"
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


# -- loading -------------------------------------------------------------------------------


@dataclass
class Doc:
    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def group(self) -> str:
        api = str(self.body["apiVersion"])
        return api.split("/")[0] if "/" in api else ""

    def __str__(self) -> str:
        return (
            f"{self.path.relative_to(K8S)}:{self.kind}/{self.body.get('metadata', {}).get('name')}"
        )


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


YAML_FILES = sorted(K8S.rglob("*.yaml"))
KUSTOMIZATIONS = [p for p in YAML_FILES if p.name == "kustomization.yaml"]
MANIFEST_FILES = [p for p in YAML_FILES if p.name != "kustomization.yaml"]
DOCS = [Doc(p, d) for p in MANIFEST_FILES for d in load_yaml_documents(p)]
CORE_DOCS = [d for d in DOCS if d.group not in NON_CORE_GROUPS]


def of_kind(kind: str) -> list[Doc]:
    return [d for d in DOCS if d.kind == kind]


def one(kind: str, name: str) -> Doc:
    found = [d for d in of_kind(kind) if d.name == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(deployment: Doc) -> dict[str, Any]:
    return deployment.body["spec"]["template"]["spec"]


def container(deployment: Doc, name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{deployment}: no container {name!r}"
    return found[0]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def image_repository(image: str) -> str:
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":")[0]


def runs_pyarmonik(c: dict[str, Any]) -> bool:
    return image_repository(c["image"]).rsplit("/", 1)[-1] == "pyarmonik"


def env_values(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def option(args: list[str], flag: str) -> str:
    """The value of `--flag VALUE` or `--flag=VALUE`; the flag must appear exactly once."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    values += [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} appears {len(values)} times in {args}"
    return values[0]


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def mounted_volume(c: dict[str, Any], path: str) -> tuple[str, str]:
    """(volume, path inside the volume) that holds `path` in container `c`: the deepest mount."""
    target = PurePosixPath(path)
    best: tuple[int, str, str] | None = None
    for mount in c.get("volumeMounts", []):
        where = PurePosixPath(mount["mountPath"])
        if target == where or where in target.parents:
            depth = len(where.parts)
            if best is None or depth > best[0]:
                inside = PurePosixPath(mount.get("subPath", "")) / target.relative_to(where)
                best = (depth, mount["name"], str(inside))
    assert best is not None, f"{path} is on no volume of container {c['name']}"
    return best[1], best[2]


def quantity(value: str | int | float) -> float:
    text = str(value)
    suffixes = {
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    for suffix in sorted(suffixes, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * suffixes[suffix]
    return float(text)


def deployments(component: str) -> list[Doc]:
    return [
        d
        for d in of_kind("Deployment")
        if d.body["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]


COMPUTE = deployments("compute")
CONTROL = one("Deployment", "control-plane")


def partition_of(deployment: Doc) -> str:
    return option(container(deployment, "agent")["args"], "--partition")


def control_plane_config() -> dict[str, Any]:
    """The control plane's --config file, found through its volume mount and ConfigMap."""
    c = container(CONTROL, "control-plane")
    path = PurePosixPath(option(c["args"], "--config"))
    volume_name, inside = mounted_volume(c, str(path))
    volume = next(v for v in pod_spec(CONTROL)["volumes"] if v["name"] == volume_name)
    assert "configMap" in volume, f"{path} is not on a ConfigMap volume"
    items = volume["configMap"].get("items")
    key = next(i["key"] for i in items if i["path"] == inside) if items else inside
    config_map = one("ConfigMap", volume["configMap"]["name"])
    assert key in config_map.body["data"], f"ConfigMap has no key {key}"
    return yaml.safe_load(config_map.body["data"][key])


CONFIG = control_plane_config()
PARTITIONS = {p["id"]: p for p in CONFIG["partitions"]}


def backend_environment() -> dict[str, str]:
    return dict(one("Secret", "pyarmonik-backends").body["stringData"])


# -- the real CLI on the manifests' command lines -------------------------------------------


@dataclass
class Parsed:
    settings: Any = None
    agent: list[Any] = field(default_factory=list)


def run_cli(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]
) -> tuple[Parsed, str]:
    """Run `pyarmonik ARGS` up to the point where it would start serving; return what it built."""
    parsed = Parsed()
    real_settings_from = cli.settings_from
    real_agent_settings = agent_module.AgentSettings

    def settings_from(*a: Any, **k: Any) -> Any:
        parsed.settings = real_settings_from(*a, **k)
        return parsed.settings

    class RecordingAgentSettings(real_agent_settings):  # type: ignore[misc,valid-type]
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            parsed.agent.append(self)

    monkeypatch.setattr(cli, "settings_from", settings_from)
    monkeypatch.setattr(cli, "run_until_signal", lambda main: None)
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    monkeypatch.setattr(agent_module, "AgentSettings", RecordingAgentSettings)
    for name in ("PYARMONIK_DATABASE", "PYARMONIK_QUEUE", "PYARMONIK_OBJECTS"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(cli.app, args, env=env)
    return parsed, f"exit {result.exit_code}: {result.output} {result.exception!r}"


# -- YAML and schemas ----------------------------------------------------------------------


def test_there_is_something_to_check() -> None:
    kinds = {d.kind for d in DOCS}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "HorizontalPodAutoscaler",
    } <= kinds
    assert {partition_of(d) for d in COMPUTE} == {"default", "gpu"}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_document_parses_as_an_object(path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents, f"{path} holds no document"
    for document in documents:
        assert isinstance(document, dict)
        assert document.get("apiVersion") and document.get("kind")
        if document["kind"] != "Kustomization":
            assert document["metadata"]["name"]


@pytest.mark.parametrize("doc", CORE_DOCS, ids=str)
def test_kubernetes_resources_validate_against_the_openapi_schemas(doc: Doc) -> None:
    # strict: unknown fields are errors too (a misspelt key would be dropped silently).
    kubernetes_validate.validate(doc.body, K8S_VERSION, strict=True)


def test_the_schema_validation_rejects_broken_manifests() -> None:
    body = json.loads(json.dumps(CONTROL.body))
    container_spec = body["spec"]["template"]["spec"]["containers"][0]
    container_spec["readinesProbe"] = container_spec.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    body = json.loads(json.dumps(CONTROL.body))
    body["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)


def test_non_core_resources_are_only_the_known_custom_ones() -> None:
    # Anything outside the Kubernetes schemas must be checked by a structural test below.
    assert {(d.body["apiVersion"], d.kind) for d in DOCS if d not in CORE_DOCS} == {
        ("keda.sh/v1alpha1", "ScaledObject")
    }


def test_every_resource_lives_in_the_armonik_namespace() -> None:
    namespaces = of_kind("Namespace")
    assert [n.name for n in namespaces] == [NAMESPACE]
    for doc in DOCS:
        if doc.kind != "Namespace":
            assert doc.body["metadata"].get("namespace") == NAMESPACE, str(doc)
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert top["namespace"] == NAMESPACE


def test_names_are_unique_per_kind() -> None:
    seen = [(d.kind, d.name) for d in DOCS]
    assert len(seen) == len(set(seen))


# -- workloads -----------------------------------------------------------------------------


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=str)
def test_deployment_selector_matches_its_template_labels(deployment: Doc) -> None:
    selector = deployment.body["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    labels = deployment.body["spec"]["template"]["metadata"]["labels"]
    assert selector["matchLabels"] and labels_match(selector["matchLabels"], labels)


def test_deployment_selectors_do_not_overlap() -> None:
    # A pod of one Deployment must not be claimed by another one's selector.
    all_deployments = of_kind("Deployment")
    for a in all_deployments:
        for b in all_deployments:
            if a is not b:
                labels = b.body["spec"]["template"]["metadata"]["labels"]
                assert not labels_match(a.body["spec"]["selector"]["matchLabels"], labels)


@pytest.mark.parametrize("service", of_kind("Service"), ids=str)
def test_service_selects_existing_pods_on_declared_ports(service: Doc) -> None:
    selector = service.body["spec"]["selector"]
    selected = [
        d
        for d in of_kind("Deployment")
        if labels_match(selector, d.body["spec"]["template"]["metadata"]["labels"])
    ]
    assert selected, f"{service} selects no pod"
    for deployment in selected:
        ports = {
            p.get("name", str(p["containerPort"])): p["containerPort"]
            for c in pod_spec(deployment)["containers"]
            for p in c.get("ports", [])
        }
        for port in service.body["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert str(target) in ports or target in ports.values(), (service, target)


def test_control_plane_is_served_on_5001_by_two_replicas() -> None:
    assert CONTROL.body["spec"]["replicas"] == 2
    service = one("Service", "control-plane")
    assert labels_match(
        service.body["spec"]["selector"], CONTROL.body["spec"]["template"]["metadata"]["labels"]
    )
    (port,) = service.body["spec"]["ports"]
    assert port["port"] == 5001
    c = container(CONTROL, "control-plane")
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named[port["targetPort"]] == int(option(c["args"], "--port")) == 5001
    # Listening on localhost would make the pod unreachable.
    assert option(c["args"], "--host") == "0.0.0.0"


def test_control_plane_probes_check_its_grpc_port() -> None:
    c = container(CONTROL, "control-plane")
    grpc_port = int(option(c["args"], "--port"))
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe_name in ("readinessProbe", "livenessProbe"):
        probe = c[probe_name]
        check = probe.get("tcpSocket") or probe.get("grpc")
        assert check is not None, f"{probe_name} is neither a TCP nor a gRPC probe"
        port = check["port"]
        assert named.get(port, port) == grpc_port


def test_control_plane_disruption_budget_protects_it_without_blocking_drains() -> None:
    (budget,) = of_kind("PodDisruptionBudget")
    labels = CONTROL.body["spec"]["template"]["metadata"]["labels"]
    assert labels_match(budget.body["spec"]["selector"]["matchLabels"], labels)
    for deployment in of_kind("Deployment"):
        if deployment is not CONTROL:
            assert not labels_match(
                budget.body["spec"]["selector"]["matchLabels"],
                deployment.body["spec"]["template"]["metadata"]["labels"],
            )
    min_available = budget.body["spec"]["minAvailable"]
    assert isinstance(min_available, int)
    assert 1 <= min_available < CONTROL.body["spec"]["replicas"]


def test_prometheus_scrapes_a_declared_control_plane_port() -> None:
    annotations = CONTROL.body["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = [p["containerPort"] for p in container(CONTROL, "control-plane")["ports"]]
    assert int(annotations["prometheus.io/port"]) in ports


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=str)
def test_volume_mounts_and_references_resolve(deployment: Doc) -> None:
    spec = pod_spec(deployment)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    assert len(volumes) == len(spec.get("volumes", [])), "duplicate volume names"
    for c in spec["containers"]:
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{c['name']} mounts undeclared {mount['name']}"
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                one("Secret", source["secretRef"]["name"])
            if "configMapRef" in source:
                one("ConfigMap", source["configMapRef"]["name"])
    for volume in volumes.values():
        if "configMap" in volume:
            data = one("ConfigMap", volume["configMap"]["name"]).body["data"]
            for item in volume["configMap"].get("items", []):
                assert item["key"] in data
        if "secret" in volume:
            one("Secret", volume["secret"]["secretName"])


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=str)
def test_containers_have_resource_requests_within_limits(deployment: Doc) -> None:
    for c in pod_spec(deployment)["containers"]:
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        for resource in ("cpu", "memory"):
            assert quantity(requests[resource]) <= quantity(limits[resource]), (c["name"], resource)
        for resource, value in requests.items():
            if "/" in resource:  # extended resources (GPUs): requests must equal limits
                assert limits.get(resource) == value


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=str)
def test_pods_run_as_the_images_non_root_user(deployment: Doc) -> None:
    spec = pod_spec(deployment)
    uid = int(containerfile_user(DEPLOY / "Containerfile").split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] is True
    for c in spec["containers"]:
        effective = c.get("securityContext", {}).get(
            "runAsUser", spec["securityContext"].get("runAsUser")
        )
        assert effective == uid, f"{c['name']} runs as {effective}, the images as {uid}"
        assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False
        assert ":" in c["image"].rsplit("/", 1)[-1] and not c["image"].endswith(":latest")


# -- compute plane: the agent/worker contract -----------------------------------------------


@pytest.mark.parametrize("deployment", COMPUTE, ids=str)
def test_compute_deployment_serves_one_declared_partition(deployment: Doc) -> None:
    partition = partition_of(deployment)
    assert deployment.name == f"compute-{partition}"
    assert deployment.body["spec"]["template"]["metadata"]["labels"]["pyarmonik/partition"] == (
        partition
    )
    assert partition in PARTITIONS, f"partition {partition} unknown to the control plane"
    assert {c["name"] for c in pod_spec(deployment)["containers"]} == {"agent", "worker"}


def test_every_declared_partition_has_a_compute_deployment() -> None:
    assert set(PARTITIONS) == {partition_of(d) for d in COMPUTE}
    assert CONFIG["default_partition"] in PARTITIONS


@pytest.mark.parametrize("deployment", COMPUTE, ids=str)
def test_agent_command_line_builds_the_agent_the_worker_expects(
    deployment: Doc, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_c, worker_c = container(deployment, "agent"), container(deployment, "worker")
    pod_env = {"POD_IP": POD_IP}
    parsed, outcome = run_cli(monkeypatch, expand(agent_c["args"], pod_env), backend_environment())
    assert len(parsed.agent) == 1, outcome
    settings = parsed.agent[0]
    assert settings.partition_id == partition_of(deployment)
    assert settings.worker_command is None  # the worker is the other container
    assert settings.host == POD_IP
    # The real agent, built from those settings, says where it serves the Agent API and
    # where it calls the worker: the worker container must be told the same.
    built = agent_module.Agent(open_backends(parsed.settings), settings)
    expected = {
        k: v for k, v in built.worker.environment().items() if k.startswith("ComputePlane__")
    }
    worker_env = env_values(worker_c)
    assert {k: worker_env.get(k) for k in expected} == expected
    # Those sockets and the task folders live on volumes both containers mount.
    shared = [
        str(settings.worker_socket),
        expected[AGENT_ADDRESS],
        str(built.work_dir / "tasks" / "some-task-token"),  # Agent._acquire's folders
    ]
    for path in shared:
        volume, inside = mounted_volume(agent_c, path)
        assert mounted_volume(worker_c, path) == (volume, inside)
        assert "emptyDir" in next(v for v in pod_spec(deployment)["volumes"] if v["name"] == volume)


@pytest.mark.parametrize("deployment", COMPUTE, ids=str)
def test_agent_is_reachable_by_other_agents_and_probed_on_its_http_port(
    deployment: Doc, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_c = container(deployment, "agent")
    assert option(agent_c["args"], "--host") == "$(POD_IP)"
    (pod_ip,) = [e for e in agent_c["env"] if e["name"] == "POD_IP"]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    parsed, outcome = run_cli(
        monkeypatch, expand(agent_c["args"], {"POD_IP": POD_IP}), backend_environment()
    )
    assert parsed.agent, outcome
    http_port = parsed.agent[0].http_port
    assert http_port > 0, "an ephemeral port cannot be probed"
    named = {p["name"]: p["containerPort"] for p in agent_c["ports"]}
    assert http_port in named.values()
    for probe_name, path in (("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
        check = agent_c[probe_name]["httpGet"]
        assert check["path"] == path
        assert named.get(check["port"], check["port"]) == http_port


@pytest.mark.parametrize("deployment", COMPUTE, ids=str)
def test_compute_pod_lets_the_running_task_finish_on_termination(deployment: Doc) -> None:
    spec = pod_spec(deployment)
    assert spec["terminationGracePeriodSeconds"] >= 600
    # The worker outlives the agent: its preStop hook waits for the agent's HTTP port.
    worker_c = container(deployment, "worker")
    command = " ".join(worker_c["lifecycle"]["preStop"]["exec"]["command"])
    port = option(container(deployment, "agent")["args"], "--http-port")
    assert port in command and "POD_IP" in command
    assert any(e["name"] == "POD_IP" for e in worker_c["env"])


def test_backend_urls_name_shared_cluster_backends() -> None:
    env = backend_environment()
    assert set(env) == {"PYARMONIK_DATABASE", "PYARMONIK_QUEUE", "PYARMONIK_OBJECTS"}
    # The embedded backends (sqlite, the table queue, a local folder) cannot be shared by pods.
    assert env["PYARMONIK_DATABASE"].split(":")[0] in ("postgresql", "postgres")
    assert env["PYARMONIK_QUEUE"].split(":")[0] in ("amqp", "amqps")
    assert env["PYARMONIK_OBJECTS"].split(":")[0] in ("redis", "rediss", "s3")
    # ... and the adapters accept them (construction does not connect).
    database = open_database(env["PYARMONIK_DATABASE"])
    open_queue(env["PYARMONIK_QUEUE"], database)
    open_objects(env["PYARMONIK_OBJECTS"])
    for deployment in of_kind("Deployment"):
        for c in pod_spec(deployment)["containers"]:
            if runs_pyarmonik(c):
                refs = [s["secretRef"]["name"] for s in c["envFrom"] if "secretRef" in s]
                assert refs == ["pyarmonik-backends"], (str(deployment), c["name"])


def test_control_plane_command_line_serves_every_partition(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    c = container(CONTROL, "control-plane")
    config_file = tmp_path / "pyarmonik.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    args = [str(config_file) if a == option(c["args"], "--config") else a for a in c["args"]]
    parsed, outcome = run_cli(monkeypatch, args, backend_environment())
    settings = parsed.settings
    assert settings is not None, outcome
    assert settings.host == "0.0.0.0" and settings.port == 5001
    assert [p.id for p in settings.partition_list()] == list(PARTITIONS)
    assert {p.id for p in settings.partition_list()} == {partition_of(d) for d in COMPUTE}
    assert settings.default_partition in {p.id for p in settings.partition_list()}
    assert settings.database == backend_environment()["PYARMONIK_DATABASE"]


def test_the_cli_rejects_an_unknown_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # run_cli must be able to fail: a command line with a flag the CLI lacks builds nothing.
    args = [*container(COMPUTE[0], "agent")["args"], "--no-such-flag", "x"]
    parsed, _ = run_cli(monkeypatch, expand(args, {"POD_IP": POD_IP}), backend_environment())
    assert parsed.agent == []


# -- autoscaling ---------------------------------------------------------------------------


def queue_metric(partition: str) -> str:
    return f"armonik_{partition}_tasks_queued"


def compute_target(ref: dict[str, Any]) -> Doc:
    assert ref.get("kind", "Deployment") == "Deployment"
    assert ref.get("apiVersion", "apps/v1") == "apps/v1"
    deployment = one("Deployment", ref["name"])
    assert deployment in COMPUTE, f"{ref['name']} is not a compute Deployment"
    return deployment


@pytest.mark.parametrize("partition", sorted(PARTITIONS))
def test_queue_metric_name_is_a_valid_prometheus_name(partition: str) -> None:
    assert METRIC_NAME.match(queue_metric(partition))


@pytest.mark.parametrize("scaled", of_kind("ScaledObject"), ids=str)
def test_keda_scaled_object_scales_a_partition_on_its_queue_depth(scaled: Doc) -> None:
    body = scaled.body
    assert body["apiVersion"] == "keda.sh/v1alpha1" and body["kind"] == "ScaledObject"
    spec = body["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "idleReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "fallback",
        "advanced",
        "triggers",
    }
    target = compute_target(spec["scaleTargetRef"])
    partition = partition_of(target)
    minimum, maximum = spec["minReplicaCount"], spec["maxReplicaCount"]
    assert isinstance(minimum, int) and isinstance(maximum, int) and 0 <= minimum <= maximum
    assert (minimum, maximum) == (
        PARTITIONS[partition]["pod_reserved"],
        PARTITIONS[partition]["pod_max"],
    )
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    # KEDA's trigger metadata is a map of strings: a YAML number is rejected by the API.
    assert all(isinstance(v, str) for v in metadata.values())
    assert re.match(r"^https?://[^/\s]+", metadata["serverAddress"])
    assert re.search(rf"\b{queue_metric(partition)}\b", metadata["query"])
    assert all(queue_metric(p) not in metadata["query"] for p in PARTITIONS if p != partition)
    assert float(metadata["threshold"]) > 0
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:  # the part KEDA hands to the HPA it creates
        probe = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "probe"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": target.name},
                "maxReplicas": 1,
                "behavior": behavior,
            },
        }
        kubernetes_validate.validate(probe, K8S_VERSION, strict=True)


def test_each_compute_deployment_has_one_autoscaler_of_each_flavour() -> None:
    keda = [compute_target(s.body["spec"]["scaleTargetRef"]).name for s in of_kind("ScaledObject")]
    hpa = [
        compute_target(h.body["spec"]["scaleTargetRef"]).name
        for h in of_kind("HorizontalPodAutoscaler")
    ]
    names = sorted(d.name for d in COMPUTE)
    assert sorted(keda) == names
    assert sorted(hpa) == names


@pytest.mark.parametrize("hpa", of_kind("HorizontalPodAutoscaler"), ids=str)
def test_hpa_alternative_reads_the_partition_queue_metric(hpa: Doc) -> None:
    spec = hpa.body["spec"]
    partition = partition_of(compute_target(spec["scaleTargetRef"]))
    (metric,) = spec["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == queue_metric(partition)
    assert metric["external"]["target"]["type"] == "AverageValue"
    assert spec["maxReplicas"] == PARTITIONS[partition]["pod_max"]
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]


# -- kustomize -----------------------------------------------------------------------------


def kustomize_resources(kustomization: Path) -> list[Path]:
    listed = yaml.safe_load(kustomization.read_text()).get("resources", [])
    return [kustomization.parent / r for r in listed]


def reachable_files(kustomization: Path) -> set[Path]:
    found: set[Path] = set()
    for resource in kustomize_resources(kustomization):
        if resource.is_dir():
            found |= reachable_files(resource / "kustomization.yaml")
        else:
            found.add(resource)
    return found


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_lists_existing_resources(kustomization: Path) -> None:
    body = yaml.safe_load(kustomization.read_text())
    assert body["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert body["kind"] == "Kustomization"
    for resource in kustomize_resources(kustomization):
        assert resource.is_file() or (resource / "kustomization.yaml").is_file(), resource


def test_every_manifest_belongs_to_a_kustomization() -> None:
    default = reachable_files(K8S / "kustomization.yaml")
    hpa = reachable_files(K8S / "autoscaling" / "hpa" / "kustomization.yaml")
    assert default | hpa == set(MANIFEST_FILES)
    # The default build uses KEDA; the HPAs are the alternative, never both at once.
    assert {d.kind for d in DOCS if d.path in default} >= {"ScaledObject", "Deployment"}
    assert "HorizontalPodAutoscaler" not in {d.kind for d in DOCS if d.path in default}


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_kustomize_builds_the_default_deployment() -> None:
    built = kustomize_build(K8S)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d.kind, d.name) for d in DOCS if d.path in reachable_files(K8S / "kustomization.yaml")
    )
    for document in built:
        if document["kind"] == "Deployment":
            for c in document["spec"]["template"]["spec"]["containers"]:
                assert re.search(r":[\w.-]+$", c["image"]) and not c["image"].endswith(":latest")


def test_kustomize_builds_with_the_hpa_alternative(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(K8S, copy)
    top = copy / "kustomization.yaml"
    text = top.read_text()
    assert "- autoscaling/keda" in text
    top.write_text(text.replace("- autoscaling/keda", "- autoscaling/hpa"))
    kinds = [d["kind"] for d in kustomize_build(copy)]
    assert kinds.count("HorizontalPodAutoscaler") == len(COMPUTE)
    assert "ScaledObject" not in kinds


# -- Containerfiles and .dockerignore -------------------------------------------------------


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        values = [a for i, a in self.instructions if i == instruction]
        return values[-1] if values else None

    def all(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_containerfile(text: str) -> list[Stage]:
    """Instructions by stage; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        instruction, arguments = instruction.upper(), arguments.strip()
        if instruction == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"cannot parse FROM {arguments}"
            stages.append(Stage(words[0], alias))
        else:
            assert stages, f"{instruction} before FROM"
            stages[-1].instructions.append((instruction, arguments))
    return stages


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def is_pinned(image: str) -> bool:
    """A digest, or a tag carrying a full x.y.z version (not `latest`, not `3.11-slim`)."""
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    return re.match(r"^\d+\.\d+\.\d+(?![\d.])", last.split(":", 1)[1]) is not None


def containerfile_user(path: Path) -> str:
    user = parse_containerfile(path.read_text())[-1].last("USER")
    assert user is not None, f"{path.name} runs as root"
    return user


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is out of the context if it or a parent matches (last rule wins)."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!"))
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return excluded


CONTAINERFILES = [DEPLOY / "Containerfile", DEPLOY / "worker.Containerfile"]


def test_dockerignore_matcher_follows_dockers_rules() -> None:
    patterns = [".venv", "**/__pycache__", "**/*.pyc", "tests", "!tests/keep.py"]
    assert ignored(".venv/bin/python", patterns)
    assert ignored("src/pyarmonik/__pycache__/x.cpython-311.pyc", patterns)
    assert ignored("a.pyc", patterns)
    assert ignored("tests/deploy/test_manifests.py", patterns)
    assert not ignored("tests/keep.py", patterns)
    assert not ignored("src/pyarmonik/cli/main.py", patterns)
    assert not ignored("venv/x", patterns)


def test_dockerignore_keeps_the_build_context_small() -> None:
    patterns = dockerignore_patterns()
    for heavy in (".git/HEAD", ".venv/bin/python", "src/pyarmonik/__pycache__/a.pyc"):
        assert ignored(heavy, patterns), heavy


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfile_bases_are_pinned(path: Path) -> None:
    stages = parse_containerfile(path.read_text())
    aliases = {s.alias for s in stages if s.alias}
    bases = [s.base for s in stages if s.base not in aliases]
    assert bases
    for base in bases:
        assert is_pinned(base), f"{path.name}: base image {base} is not pinned"
        assert re.match(r"^(docker\.io/(library/)?)?python:3\.11\.\d+-slim", base), base


def test_pinning_check_tells_floating_tags_apart() -> None:
    assert is_pinned("python:3.11.13-slim-bookworm")
    assert is_pinned("python@sha256:" + "a" * 64)
    assert not is_pinned("python:3.11-slim")
    assert not is_pinned("python:latest")
    assert not is_pinned("python")
    assert not is_pinned("registry:5000/python")


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_containerfile_copies_sources_that_are_in_the_build_context(path: Path) -> None:
    patterns = dockerignore_patterns()
    copies = [s for stage in parse_containerfile(path.read_text()) for s in stage.all("COPY")]
    sources = [
        source
        for arguments in copies
        if "--from=" not in arguments
        for source in shlex.split(arguments)[:-1]
        if not source.startswith("--")
    ]
    assert sources
    for source in sources:
        on_disk = ROOT / source
        assert on_disk.exists(), f"{path.name}: COPY {source}: no such file"
        assert not ignored(source, patterns), f"{path.name}: {source} is in .dockerignore"
        if on_disk.is_dir():
            python_files = [f for f in on_disk.rglob("*.py") if "__pycache__" not in f.parts]
            assert python_files
            for file in python_files:
                assert not ignored(str(file.relative_to(ROOT)), patterns), file


def test_pyarmonik_image_runs_the_pyarmonik_command_as_non_root() -> None:
    path = DEPLOY / "Containerfile"
    final = parse_containerfile(path.read_text())[-1]
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None and exec_form(entrypoint) == ["pyarmonik"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pyarmonik" in pyproject["project"]["scripts"]
    user = containerfile_user(path)
    assert re.match(r"^[1-9]\d*(:\d+)?$", user), f"USER {user} is root or not numeric"
    exposed = {p for arguments in final.all("EXPOSE") for p in arguments.split()}
    assert {"5001", "1080"} <= exposed
    # The same image runs the control plane and the agents.
    images = {
        c["image"]
        for d in of_kind("Deployment")
        for c in pod_spec(d)["containers"]
        if c["name"] in ("control-plane", "agent")
    }
    version = pyproject["project"]["version"]
    assert images == {f"pyarmonik:{version}"}


def test_worker_image_runs_the_sample_worker_on_the_official_sdk() -> None:
    path = DEPLOY / "worker.Containerfile"
    final = parse_containerfile(path.read_text())[-1]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("armonik==")]
    runs = " ".join(final.all("RUN"))
    assert re.search(rf"pip install [^&]*[\"']?{re.escape(pin)}[\"']?", runs), (
        f"the worker image does not install {pin}"
    )
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None
    command = exec_form(entrypoint)
    script = next(a for a in command if a.endswith(".py"))
    copied = {}
    for arguments in final.all("COPY"):
        *sources, destination = shlex.split(arguments)
        for source in sources:
            copied[destination] = ROOT / source
    assert script in copied, f"{script} is not copied into the image"
    assert "armonik.worker" in copied[script].read_text()
    assert "python" in command[command.index(script) - 1]
    assert containerfile_user(path) == containerfile_user(DEPLOY / "Containerfile")
    # The addresses baked into the image agree with the ones the manifests give the worker.
    baked = {}
    for arguments in final.all("ENV"):
        for pair in shlex.split(arguments):
            key, _, value = pair.partition("=")
            baked[key] = value
    for deployment in COMPUTE:
        worker_env = env_values(container(deployment, "worker"))
        for name in (WORKER_ADDRESS, AGENT_ADDRESS):
            assert baked[name] == worker_env[name], name
