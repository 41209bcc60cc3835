"""The user roles (manifests/install/base/user-roles.yaml) on the real API server and its
clusterrole-aggregation controller: namespace editors run VMs in their namespace only, viewers
read, and nobody but a fleet admin touches Hosts or policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import Kube, wait_for

pytestmark = pytest.mark.e2e

ROLES = Path(__file__).resolve().parents[2] / "manifests" / "install" / "base" / "user-roles.yaml"
EDITOR = "alice"
VIEWER = "bob"
FLEET_ADMIN = "carol"
ADMIN = "dave"
TEAM = "team-a"
OTHER = "team-b"
NAMESPACED = ["virtualmachines.vmshift.io", "virtualmachinemigrations.vmshift.io",
              "virtualmachineimports.vmshift.io"]
CLUSTER_SCOPED = ["hosts.vmshift.io", "migrationpolicies.vmshift.io", "remediationpolicies.vmshift.io"]
WRITES = ["create", "update", "patch", "delete"]
READS = ["get", "list", "watch"]


def _aggregated(kube: Kube, role: str) -> bool:
    rules: list[dict[str, Any]] = kube.get_json("clusterrole", role).get("rules") or []
    return any("vmshift.io" in r.get("apiGroups", []) and "virtualmachines" in r.get("resources", [])
               for r in rules)


@pytest.fixture(scope="module")
def roles(kube: Kube) -> Kube:
    kube.apply_crds()
    kube.kubectl("apply", "-f", str(ROLES))
    for namespace in (TEAM, OTHER):
        kube.kubectl("create", "namespace", namespace, check=False)
    kube.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", f"--user={EDITOR}",
                 "-n", TEAM, check=False)
    kube.kubectl("create", "rolebinding", "dave-admin", "--clusterrole=admin", f"--user={ADMIN}",
                 "-n", TEAM, check=False)
    kube.kubectl("create", "rolebinding", "bob-view", "--clusterrole=view", f"--user={VIEWER}",
                 "-n", TEAM, check=False)
    kube.kubectl("create", "clusterrolebinding", "carol-fleet", "--clusterrole=vmshift-fleet-admin",
                 f"--user={FLEET_ADMIN}", check=False)
    for role in ("view", "edit", "admin"):
        wait_for(lambda r=role: _aggregated(kube, r), f"the vmshift rules aggregated into ClusterRole {role}",
                 describe=lambda r=role: str(kube.get_json("clusterrole", r).get("rules")))
    return kube


def can(kube: Kube, user: str, verb: str, resource: str, namespace: str | None, subresource: str = "") -> str:
    where = ["-n", namespace] if namespace else []
    sub = [f"--subresource={subresource}"] if subresource else []
    answer = kube.kubectl("auth", "can-i", verb, resource, f"--as={user}", *where, *sub, check=False)
    return answer.stdout.strip()


@pytest.mark.parametrize("resource", NAMESPACED)
@pytest.mark.parametrize("verb", READS + WRITES)
def test_an_editor_runs_vms_and_migrations_in_their_namespace(roles: Kube, verb: str, resource: str) -> None:
    assert can(roles, EDITOR, verb, resource, TEAM) == "yes", f"{EDITOR} (edit in {TEAM}) cannot {verb} {resource}"


@pytest.mark.parametrize("resource", NAMESPACED)
@pytest.mark.parametrize("verb", READS + WRITES)
def test_an_editor_can_do_nothing_in_another_namespace(roles: Kube, verb: str, resource: str) -> None:
    assert can(roles, EDITOR, verb, resource, OTHER) == "no", f"{EDITOR} can {verb} {resource} in {OTHER}"


@pytest.mark.parametrize("resource", NAMESPACED)
def test_status_belongs_to_the_operator(roles: Kube, resource: str) -> None:
    assert can(roles, EDITOR, "get", resource, TEAM, "status") == "yes", f"{EDITOR} cannot read {resource} status"
    for verb in ("update", "patch"):
        assert can(roles, EDITOR, verb, resource, TEAM, "status") == "no", f"{EDITOR} can {verb} {resource}/status"
        assert can(roles, ADMIN, verb, resource, TEAM, "status") == "no", \
            f"a namespace admin can {verb} {resource}/status"
        assert can(roles, ADMIN, verb, resource, TEAM) == "yes", f"a namespace admin cannot {verb} {resource}"


@pytest.mark.parametrize("resource", CLUSTER_SCOPED)
@pytest.mark.parametrize("verb", ["create", "update", "patch", "delete", "get"])
def test_an_editor_cannot_touch_the_fleet(roles: Kube, verb: str, resource: str) -> None:
    assert can(roles, EDITOR, verb, resource, None) == "no", f"{EDITOR} can {verb} {resource}"


@pytest.mark.parametrize("resource", NAMESPACED)
def test_a_viewer_reads_and_changes_nothing(roles: Kube, resource: str) -> None:
    for verb in READS:
        assert can(roles, VIEWER, verb, resource, TEAM) == "yes", f"{VIEWER} (view in {TEAM}) cannot {verb} {resource}"
    for verb in WRITES:
        assert can(roles, VIEWER, verb, resource, TEAM) == "no", f"{VIEWER} (view) can {verb} {resource}"


@pytest.mark.parametrize("resource", CLUSTER_SCOPED)
def test_the_fleet_admin_runs_hosts_and_policies(roles: Kube, resource: str) -> None:
    for verb in READS + WRITES:
        assert can(roles, FLEET_ADMIN, verb, resource, None) == "yes", f"{FLEET_ADMIN} cannot {verb} {resource}"
    assert can(roles, FLEET_ADMIN, "create", "virtualmachines.vmshift.io", TEAM) == "no"


def test_an_editor_really_creates_a_vm_and_a_viewer_really_cannot(roles: Kube) -> None:
    """Not only the authorizer's answer: the API server takes the editor's VM and refuses the viewer's."""
    vm = {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
          "metadata": {"name": "alice-vm", "namespace": TEAM},
          "spec": {"cpus": 1, "memoryMiB": 256}}
    made = roles.kubectl("create", f"--as={EDITOR}", "-f", "-", input=yaml.safe_dump(vm), check=False)
    assert made.returncode == 0, f"{EDITOR} could not create a VM in {TEAM}: {made.stderr}"
    other = {**vm, "metadata": {"name": "alice-vm", "namespace": OTHER}}
    refused = roles.kubectl("create", f"--as={EDITOR}", "-f", "-", input=yaml.safe_dump(other), check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr, f"{EDITOR} created a VM in {OTHER}"
    seen = roles.kubectl("get", "vsvm", "alice-vm", "-n", TEAM, f"--as={VIEWER}", check=False)
    assert seen.returncode == 0, f"{VIEWER} cannot read the VM: {seen.stderr}"
    deleted = roles.kubectl("delete", "vsvm", "alice-vm", "-n", TEAM, f"--as={VIEWER}", check=False)
    assert deleted.returncode != 0 and "forbidden" in deleted.stderr, f"{VIEWER} deleted a VM"
