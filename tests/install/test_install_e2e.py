"""The install as a user runs it, on a real API server of its own: one `kubectl apply -k`, then the operator
as its service account with the Deployment's own arguments.

No node runs the pods here (tests/cluster does that); this module checks that every object of every
overlay is admitted, that one command installs on an empty cluster, and that the operator, started
with the manifest's args and the manifest's RBAC, makes its token Secrets and works.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from tests.install.manifests import INSTALL, OVERLAYS, REPO
from tests.kube import Kube, own_control_plane, wait_for
from vmshift.devcluster.stack import _free_port

pytestmark = pytest.mark.e2e

NAMESPACE = "vmshift-system"
SA = "vmshift-operator"


@pytest.fixture(scope="module")
def empty() -> Iterator[Kube]:
    """A control plane of this module's own: empty, and no other test's operator watching it."""
    with own_control_plane("install") as kube:
        yield kube


def build(kube: Kube, overlay: str) -> list[dict[str, Any]]:
    text = kube.kubectl("kustomize", str(INSTALL / overlay)).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def installed(empty: Kube) -> Kube:
    """The kind overlay applied once, in one command, to the empty cluster."""
    proc = empty.kubectl("apply", "-k", str(INSTALL / "kind"), check=False)
    assert proc.returncode == 0, f"one `kubectl apply -k manifests/install/kind` failed:\n{proc.stderr}"
    return empty


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_builds(empty: Kube, overlay: str) -> None:
    objs = build(empty, overlay)
    assert objs, f"{overlay} builds nothing"
    images = {c["image"] for o in objs if o["kind"] in ("Deployment", "StatefulSet")
              for c in o["spec"]["template"]["spec"]["containers"]}
    if overlay == "kind":
        assert images == {"vmshift:dev"}
    elif images:
        assert all(image.startswith("vmshift:") and image != "vmshift:latest" for image in images), images


def test_one_apply_installs_everything_on_an_empty_cluster(installed: Kube) -> None:
    for obj in build(installed, "kind"):
        meta = obj["metadata"]
        where = ["-n", meta["namespace"]] if "namespace" in meta else []
        kind = f"{obj['kind'].lower()}.{obj['apiVersion'].split('/')[0]}" if "/" in obj["apiVersion"] \
            else obj["kind"].lower()
        got = installed.kubectl("get", kind, meta["name"], *where, "-o", "name", check=False)
        assert got.returncode == 0, f"{obj['kind']} {meta['name']} was not created: {got.stderr}"


@pytest.mark.parametrize("apply", [[], ["--server-side", "--force-conflicts"]], ids=["client-side", "server-side"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_server_admits_every_overlay(installed: Kube, overlay: str, apply: list[str]) -> None:
    """As kubectl and Argo CD apply (client-side) and as Flux does (server-side apply)."""
    proc = installed.kubectl("apply", *apply, "-k", str(INSTALL / overlay), "--dry-run=server", check=False)
    assert proc.returncode == 0, f"the API server refuses {overlay}:\n{proc.stderr}"


@pytest.fixture(scope="module")
def samples(installed: Kube) -> Kube:
    installed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
    installed.kubectl("apply", "-k", str(REPO / "manifests" / "samples"))
    return installed


def _service_account_kubeconfig(kube: Kube, path: Path) -> Path:
    """A kubeconfig holding the operator's service-account token: what the pod authenticates with."""
    token = kube.kubectl("create", "token", SA, "-n", NAMESPACE, "--duration=1h").stdout.strip()
    ca = Path(kube.state.dir) / "pki" / "ca.crt"
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": kube.state.server, "certificate-authority": str(ca)}}],
        "users": [{"name": SA, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": SA}}],
    }
    path.write_text(json.dumps(config))
    return path


class Operator:
    """``vmshift operator`` with the Deployment's args, its listeners moved to free loopback-reachable ports."""

    def __init__(self, kube: Kube, workdir: Path) -> None:
        deployment = next(o for o in build(kube, "kind") if o["kind"] == "Deployment")
        args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        self.ports = {"metrics-port": _free_port(), "webhook-port": _free_port()}
        self.argv: list[str] = []
        for arg in args:
            name, _, value = arg.partition("=")
            if name.lstrip("-") in self.ports:
                arg = f"{name}={self.ports[name.lstrip('-')]}"
            elif name == "--liveness":
                url = urlsplit(value)
                self.liveness_port = _free_port()
                arg = f"--liveness={urlunsplit(url._replace(netloc=f'{url.hostname}:{self.liveness_port}'))}"
                self.liveness_path = url.path
            self.argv.append(arg)
        self.env = {**kube.env, "KUBECONFIG": str(_service_account_kubeconfig(kube, workdir / "sa.kubeconfig")),
                    "VMSHIFT_NAMESPACE": NAMESPACE}
        self.log = workdir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vmshift.cli.main", *self.argv], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        self.proc = None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""

    def get(self, port: int, path: str) -> int | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return int(response.status)
        except OSError:
            return None


@pytest.fixture(scope="module")
def operator(samples: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(samples, tmp_path_factory.mktemp("operator"))
    op.start()
    try:
        wait_for(lambda: op.get(op.liveness_port, op.liveness_path) == 200, "the operator's liveness endpoint",
                 60, describe=op.tail)
        yield op
    finally:
        op.stop()


def _secret(kube: Kube, name: str) -> dict[str, Any]:
    got: dict[str, Any] = kube.get_json("secret", name, "-n", NAMESPACE)
    return got


def test_the_operator_makes_the_token_secrets_at_first_start(samples: Kube, operator: Operator) -> None:
    for name in ("vmshift-agent-token", "vmshift-webhook-token"):
        secret = _secret(samples, name)
        token = base64.b64decode(secret["data"]["token"]).decode()
        assert len(token) >= 32, f"{name} holds a short token"
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "vmshift-operator"


def test_the_operator_serves_metrics_and_the_webhook_on_every_address(operator: Operator) -> None:
    assert operator.get(operator.ports["metrics-port"], "/metrics") == 200
    assert operator.get(operator.ports["webhook-port"], "/healthz") == 200


def test_the_operator_writes_host_status_as_its_service_account(samples: Kube, operator: Operator) -> None:
    """The sample Hosts' agents are pods no node runs here: each Host must say Unreachable, which takes
    a status patch that only an authenticated operator is allowed to make."""
    def phases() -> dict[str, str] | None:
        hosts = samples.get_json("hosts")["items"]
        seen = {h["metadata"]["name"]: (h.get("status") or {}).get("phase", "") for h in hosts}
        return seen if seen and all(seen.values()) else None
    seen = wait_for(phases, "every sample Host to get a phase", 60,
                    describe=lambda: f"{samples.kubectl('get', 'hosts').stdout}\n{operator.tail()}")
    assert set(seen.values()) == {"Unreachable"}, seen
    assert "Forbidden" not in operator.log.read_text(), operator.tail()


def test_a_restart_keeps_the_tokens(samples: Kube, operator: Operator) -> None:
    before = {n: _secret(samples, n)["data"]["token"] for n in ("vmshift-agent-token", "vmshift-webhook-token")}
    operator.stop()
    operator.start()
    wait_for(lambda: operator.get(operator.liveness_port, operator.liveness_path) == 200,
             "the restarted operator's liveness endpoint", 60, describe=operator.tail)
    after = {n: _secret(samples, n)["data"]["token"] for n in before}
    assert after == before
    assert "using Secret vmshift-system/vmshift-agent-token" in operator.tail()


def test_a_token_secret_without_its_key_stops_the_start_with_a_clear_message(samples: Kube,
                                                                           operator: Operator) -> None:
    operator.stop()
    samples.kubectl("create", "secret", "generic", "hand-made", "-n", NAMESPACE, "--from-literal=password=x")
    argv = [a if not a.startswith("--agent-token-secret=") else "--agent-token-secret=hand-made"
            for a in operator.argv]
    proc = subprocess.run([sys.executable, "-m", "vmshift.cli.main", *argv], env=operator.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Secret vmshift-system/hand-made exists but has no non-empty key 'token'" in proc.stderr, proc.stderr
    assert "token" not in _secret(samples, "hand-made")["data"], "a person's Secret was overwritten"
