"""The install manifests name only what the code has: images, flags, ports, Secrets, hosts.

Every container's args go through the real ``vmshift`` argument parser (the agents' per-pod files
through ``@FILE`` as the pods read them); every port a flag, a probe or a Service names is a
container port; each sample Host is exactly what its agent pod simulates.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.install.manifests import (
    INSTALL,
    OVERLAYS,
    REPO,
    SAMPLE_HOSTS,
    containers,
    expand,
    kustomization,
    objects,
    one,
    port,
)
from vmshift.cli.main import build_parser

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
NAMESPACE = "vmshift-system"


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    return objects(INSTALL / "default")


def test_the_crd_kustomization_lists_every_generated_crd() -> None:
    listed = set(kustomization(REPO / "crds")["resources"])
    generated = {p.name for p in (REPO / "crds").glob("*.vmshift.io.yaml")}
    assert listed == generated, f"crds/Kustomization lists {sorted(listed)}, crds/ holds {sorted(generated)}"


def test_the_base_installs_the_crds_and_the_operator_without_peering(default: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects(INSTALL / "base")}
    assert {"CustomResourceDefinition", "Namespace", "Deployment", "ClusterRole"} <= kinds
    assert not [o for o in default if o["apiVersion"].startswith("kopf.dev/")
                or o["metadata"]["name"].endswith("kopf.dev")], "Kopf peering objects are back"


def test_the_operator_runs_as_one_replica_replaced_not_rolled(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment", "vmshift-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args


def test_images_are_the_version_tag_and_never_pulled_when_present(default: list[dict[str, Any]]) -> None:
    for workload, container in containers(default):
        where = f"{workload['kind']} {workload['metadata']['name']}"
        assert container["image"] == f"vmshift:{VERSION}", f"{where} runs {container['image']}"
        assert container.get("imagePullPolicy") == "IfNotPresent", f"{where} has no IfNotPresent pull policy"
    kind = kustomization(INSTALL / "kind")
    assert kind["images"] == [{"name": "vmshift", "newTag": "dev"}]


def test_every_container_is_locked_down_and_asks_for_resources(default: list[dict[str, Any]]) -> None:
    for workload, container in containers(default):
        where = f"{workload['kind']} {workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == 10001, f"{where}: the image's user is 10001"
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
        assert "memory" in container["resources"]["limits"], where
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"
        for probe in ("livenessProbe", "readinessProbe"):
            assert probe in container, f"{where} has no {probe}"


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"vmshift rejects the manifest's arguments {argv}") from exc


def test_the_operator_args_are_the_operators_flags_and_ports(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment", "vmshift-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = _parse(container["args"])
    assert args.command == "operator"
    assert args.metrics_address == "0.0.0.0" and args.metrics_port == port(container, "metrics")
    assert args.webhook_port == port(container, "alerts")
    liveness = urlsplit(args.liveness)
    assert (liveness.hostname, liveness.port) == ("0.0.0.0", port(container, "health"))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": liveness.path, "port": "health"}, probe
    env = {e["name"]: e for e in container["env"]}
    assert env["VMSHIFT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert deployment["metadata"]["namespace"] == NAMESPACE


def _agent_files(objs: list[dict[str, Any]], tmp_path: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The agent container, and its per-pod argument files written where the pods see them (by pod name)."""
    statefulset = one(objs, "StatefulSet", "vmshift-agent")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    hosts_volume = next(name for name, v in volumes.items() if "configMap" in v)
    config = one(objs, "ConfigMap", volumes[hosts_volume]["configMap"]["name"])
    files = {}
    for pod, text in config["data"].items():
        path = tmp_path / mounts[hosts_volume].lstrip("/") / pod
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files[pod] = path
    return container, files


def _agent_args(container: dict[str, Any], pod: str, files: dict[str, Path], tmp_path: Path) -> argparse.Namespace:
    env = {"POD_NAME": pod, "POD_IP": "10.244.0.7"}
    argv = [expand(a, env) for a in container["args"]]
    # The @FILE argument names the path inside the pod; the test wrote the file under tmp_path.
    argv = [f"@{tmp_path}{a[1:]}" if a.startswith("@") else a for a in argv]
    assert any(a == f"@{files[pod]}" for a in argv), f"the agent args name no file of pod {pod}: {argv}"
    return _parse(argv)


def test_every_agent_pod_is_the_sample_host_that_points_at_it(default: list[dict[str, Any]], tmp_path: Path) -> None:
    container, files = _agent_files(default, tmp_path)
    statefulset = one(default, "StatefulSet", "vmshift-agent")
    service = one(default, "Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "per-pod DNS names need a headless Service"
    hosts = [h for h in yaml.safe_load_all(SAMPLE_HOSTS.read_text()) if h]
    assert statefulset["spec"]["replicas"] == len(hosts) == len(files), \
        f"{statefulset['spec']['replicas']} agent pods, {len(files)} pod files, {len(hosts)} sample Hosts"
    for ordinal, host in enumerate(hosts):
        pod = f"{statefulset['metadata']['name']}-{ordinal}"
        args = _agent_args(container, pod, files, tmp_path)
        spec = host["spec"]
        simulated = (args.name, args.cpu_model, args.cores, args.memory_mib, args.bandwidth_mbps,
                     sorted(args.shared_volume), sorted(args.passthrough_lun))
        described = (host["metadata"]["name"], spec["cpu"]["model"], spec["cpu"]["cores"], spec["memoryMiB"],
                     float(spec["migrationBandwidthMbps"]), sorted(spec["storage"]["sharedVolumes"]),
                     sorted(spec["storage"].get("passthroughLuns", [])))
        assert simulated == described, f"pod {pod} simulates {simulated}, Host says {described}"
        endpoint = urlsplit(spec["agent"]["endpoint"])
        assert endpoint.hostname == f"{pod}.{service['metadata']['name']}.{NAMESPACE}.svc", \
            f"Host {args.name} points at {endpoint.hostname}, its agent is pod {pod}"
        assert endpoint.port == args.api_port == port(container, "api")
        assert args.migration_port == port(container, "migration")
        assert args.listen == "0.0.0.0" and args.advertise_host == "10.244.0.7", "migrations go to the pod IP"


def test_the_agents_token_is_the_secret_the_operator_makes_and_the_hosts_name(default: list[dict[str, Any]],
                                                                            tmp_path: Path) -> None:
    operator = one(default, "Deployment", "vmshift-operator")["spec"]["template"]["spec"]["containers"][0]
    made = _parse(operator["args"]).agent_token_secret
    statefulset = one(default, "StatefulSet", "vmshift-agent")
    container, files = _agent_files(default, tmp_path)
    token_file = _agent_args(container, next(iter(files)), files, tmp_path).token_file
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if str(token_file).startswith(m["mountPath"] + "/"))
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == made
    assert token_file == Path(mount["mountPath"]) / "token"
    for host in (h for h in yaml.safe_load_all(SAMPLE_HOSTS.read_text()) if h):
        ref = host["spec"]["agent"]["tokenSecretRef"]
        assert (ref["name"], ref["namespace"], ref.get("key", "token")) == (made, NAMESPACE, "token"), \
            host["metadata"]["name"]


def test_every_service_targets_a_port_its_pods_have(default: list[dict[str, Any]]) -> None:
    pods = {o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: o
            for o in default if o["kind"] in ("Deployment", "StatefulSet")}
    for service in (o for o in default if o["kind"] == "Service"):
        workload = pods[service["spec"]["selector"]["app.kubernetes.io/name"]]
        container = workload["spec"]["template"]["spec"]["containers"][0]
        for service_port in service["spec"]["ports"]:
            assert port(container, service_port["targetPort"]) == service_port["port"], \
                f"Service {service['metadata']['name']} port {service_port['name']}"


def test_the_rbac_names_no_wildcards(default: list[dict[str, Any]]) -> None:
    for role in (o for o in default if o["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {field} of {role['metadata']['name']}: {rule}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_names_only_files_that_exist(overlay: str) -> None:
    for entry in kustomization(INSTALL / overlay)["resources"]:
        assert (INSTALL / overlay / entry).exists(), f"{overlay} names {entry}, which does not exist"


def test_the_dockerfile_exposes_the_manifests_ports(default: list[dict[str, Any]]) -> None:
    exposed = {int(p) for p in re.findall(r"\d+", next(
        line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("EXPOSE")))}
    used = {p["containerPort"] for _, c in containers(default) for p in c["ports"]}
    assert used == exposed, f"the manifests use ports {sorted(used)}, the Dockerfile exposes {sorted(exposed)}"
