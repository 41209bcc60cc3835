"""The operator's RBAC (manifests/install/base/rbac.yaml) on the real API server: enough, and no more."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.kube import Kube

pytestmark = pytest.mark.e2e

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests" / "install" / "base"
SA = "system:serviceaccount:vmshift-system:vmshift-operator"

ALLOWED = [
    ("watch", "virtualmachines.vmshift.io"),
    ("patch", "virtualmachines.vmshift.io/status"),
    ("patch", "hosts.vmshift.io/status"),
    ("create", "virtualmachinemigrations.vmshift.io"),
    ("delete", "virtualmachinemigrations.vmshift.io"),
    ("create", "events"),
    # MigrationPolicy.spec.selector.namespaceSelector: the operator caches the namespaces' labels
    ("list", "namespaces"),
    ("watch", "namespaces"),
    ("patch", "migrationpolicies.vmshift.io/status"),
]
DENIED = [
    ("delete", "hosts.vmshift.io"),
    ("list", "secrets"),
    ("create", "secrets"),
    ("delete", "namespaces"),
    ("create", "pods"),
    ("update", "virtualmachines.vmshift.io"),
]


@pytest.fixture(scope="module")
def rbac(kube: Kube) -> Kube:
    kube.apply_crds()
    kube.kubectl("apply", "-f", str(MANIFESTS / "namespace.yaml"), "-f", str(MANIFESTS / "rbac.yaml"))
    return kube


@pytest.mark.parametrize(("verb", "resource"), ALLOWED)
def test_the_operator_may(rbac: Kube, verb: str, resource: str) -> None:
    answer = rbac.kubectl("auth", "can-i", verb, resource, f"--as={SA}", "-A", check=False)
    assert answer.stdout.strip() == "yes", f"{SA} cannot {verb} {resource}: {answer.stdout}{answer.stderr}"


def test_the_operator_may_create_secrets_in_its_own_namespace_only(rbac: Kube) -> None:
    """The token Secrets it makes at first start; nowhere else."""
    mine = rbac.kubectl("auth", "can-i", "create", "secrets", f"--as={SA}", "-n", "vmshift-system", check=False)
    assert mine.stdout.strip() == "yes", f"{SA} cannot make its token Secrets: {mine.stdout}{mine.stderr}"
    other = rbac.kubectl("auth", "can-i", "create", "secrets", f"--as={SA}", "-n", "default", check=False)
    assert other.stdout.strip() == "no", f"{SA} can create Secrets in default, which it must not"


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
