"""The operator's RBAC (manifests/operator/rbac.yaml) on the real API server: enough, and no more."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.kube import Kube

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "operator"
SA = "system:serviceaccount:vmshift-system:vmshift-operator"

ALLOWED = [
    ("watch", "virtualmachines.vmshift.io"),
    ("patch", "virtualmachines.vmshift.io/status"),
    ("patch", "hosts.vmshift.io/status"),
    ("create", "virtualmachinemigrations.vmshift.io"),
    ("delete", "virtualmachinemigrations.vmshift.io"),
    ("create", "events"),
]
DENIED = [
    ("delete", "hosts.vmshift.io"),
    ("list", "secrets"),
    ("create", "secrets"),
    ("delete", "namespaces"),
    ("create", "pods"),
    ("update", "virtualmachines.vmshift.io"),
]


def test_the_operator_role_names_no_wildcards() -> None:
    docs = list(yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()))
    for role in (d for d in docs if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {field} of {rule}"


@pytest.fixture(scope="module")
def rbac(kube: Kube) -> Kube:
    kube.apply_crds()
    kube.kubectl("apply", "-f", str(MANIFESTS / "namespace.yaml"), "-f", str(MANIFESTS / "rbac.yaml"))
    return kube


@pytest.mark.parametrize(("verb", "resource"), ALLOWED)
def test_the_operator_may(rbac: Kube, verb: str, resource: str) -> None:
    answer = rbac.kubectl("auth", "can-i", verb, resource, f"--as={SA}", "-A", check=False)
    assert answer.stdout.strip() == "yes", f"{SA} cannot {verb} {resource}: {answer.stdout}{answer.stderr}"


@pytest.mark.parametrize(("verb", "resource"), DENIED)
def test_the_operator_may_not(rbac: Kube, verb: str, resource: str) -> None:
    answer = rbac.kubectl("auth", "can-i", verb, resource, f"--as={SA}", "-A", check=False)
    assert answer.stdout.strip() == "no", f"{SA} can {verb} {resource}, which it must not"


def test_the_operator_reads_secrets_only_in_its_own_namespace(rbac: Kube) -> None:
    """Agent tokens live in vmshift-system; a Host's tokenSecretRef cannot make it read any other Secret."""
    def can(namespace: str) -> str:
        answer = rbac.kubectl("auth", "can-i", "get", "secrets", f"--as={SA}", "-n", namespace, check=False)
        return answer.stdout.strip()

    assert can("vmshift-system") == "yes"
    for other in ("default", "kube-system", "tenant-a"):
        assert can(other) == "no", f"{SA} can read Secrets in {other}"
    docs = list(yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()))
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert not [r for r in cluster_role["rules"] if "secrets" in r["resources"]], "secrets in the ClusterRole"
