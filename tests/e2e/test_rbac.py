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
    ("get", "secrets"),
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
    role = next(d for d in docs if d["kind"] == "ClusterRole")
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
