"""The whole product on the real control plane: CRDs, agent processes, their Hosts, the operator process."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kube import Kube, wait_for
from vmshift.devcluster.stack import HostPlan, Stack
from vmshift.hypervisor.protocol import HostInfo, VmInfo, VmState

#: The e2e fleet: two icelake hosts, a haswell, an AMD zen3, a small one and a cordoned one.
HOSTS = [
    HostPlan("h-icelake-1", "icelake", shared_volumes=("csv-1",), passthrough_luns=("lun-7",),
             labels={"rack": "r1"}),
    HostPlan("h-icelake-2", "icelake", shared_volumes=("csv-1",), passthrough_luns=("lun-7",),
             labels={"rack": "r2"}),
    HostPlan("h-haswell", "haswell", shared_volumes=("csv-1",), labels={"rack": "r1"}),
    HostPlan("h-zen3", "zen3", shared_volumes=("csv-1",), labels={"rack": "r2"}),
    HostPlan("h-small", "icelake", memory_mib=1024, cores=4, shared_volumes=("csv-1",), labels={"rack": "r3"}),
    HostPlan("h-cordoned", "icelake", shared_volumes=("csv-1",), unschedulable=True, labels={"rack": "r3"}),
    HostPlan("h-slow", "icelake", bandwidth_mbps=1000, shared_volumes=("csv-1",), labels={"rack": "slow"}),
]


PURGE = ["virtualmachineimports.vmshift.io", "virtualmachinemigrations.vmshift.io", "virtualmachines.vmshift.io",
         "hosts.vmshift.io", "migrationpolicies.vmshift.io", "remediationpolicies.vmshift.io"]


class Fleet:
    """What e2e tests drive: kubectl as a user would, and the agents to check the truth."""

    def __init__(self, kube: Kube, stack: Stack) -> None:
        self.kube = kube
        self.stack = stack

    # -- API side ------------------------------------------------------------------------------

    def namespace(self) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        self.kube.kubectl("create", "namespace", name)
        return name

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kube.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                "items": list(objs)}))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        args = [kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.kube.kubectl("get", *args, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def status(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.get(kind, name, namespace).get("status") or {}

    def wait_phase(self, kind: str, name: str, namespace: str | None, phases: set[str],
                   timeout: float = 90) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(kind, name, namespace)
            return status if status.get("phase") in phases else None
        return wait_for(check, f"{kind} {namespace}/{name} to reach {sorted(phases)}", timeout,
                        describe=lambda: f"{json.dumps(self.status(kind, name, namespace))[:1500]}\n"
                                         f"operator log:\n{self.stack.operator_log_tail(25)}")

    def vm(self, namespace: str, name: str, *, host: str | None = None, compatibility: bool = False,
           memory: int = 256, dirty: float = 20.0, working_set: int = 32, disks: list[dict[str, Any]] | None = None,
           **spec: Any) -> dict[str, Any]:
        placement = spec.pop("placement", {}) | ({"host": host} if host else {})
        return {
            "apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": namespace, "labels": spec.pop("labels", {"app": name})},
            "spec": {"cpus": 1, "memoryMiB": memory, "processor": {"compatibility": compatibility},
                     "disks": disks if disks is not None else [{"name": "root", "sizeGiB": 10, "volume": "csv-1"}],
                     "workload": {"dirtyRateMiBps": dirty, "workingSetMiB": working_set},
                     "placement": placement, **spec},
        }

    def migration(self, namespace: str, name: str, vm: str, target: str | None = None,
                  **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineMigration",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"vmName": vm, **({"targetHost": target} if target else {}), **spec}}

    def running_vm(self, namespace: str, name: str, timeout: float = 60, *, keep_pin: bool = False,
                   **kw: Any) -> dict[str, Any]:
        """Create a VM and wait until it runs. A ``host`` only chooses where it starts unless
        ``keep_pin``: a pinned VM (spec.placement.host) would be moved back after a manual migration."""
        self.apply(self.vm(namespace, name, **kw))
        status = self.wait_phase("vsvm", name, namespace, {"Running"}, timeout)
        if kw.get("host") and not keep_pin:
            self.unpin(namespace, name)
        return status

    def unpin(self, namespace: str, name: str) -> None:
        self.kube.kubectl("patch", "vsvm", name, "-n", namespace, "--type=merge",
                          "-p", '{"spec":{"placement":{"host":null}}}')

    # -- agent side ----------------------------------------------------------------------------

    def agent_vms(self, host: str) -> list[VmInfo]:
        async def call() -> list[VmInfo]:
            async with self.stack.agents[host].client() as client:
                return await client.list_vms()
        return asyncio.run(call())

    def agent_host(self, host: str) -> HostInfo:
        async def call() -> HostInfo:
            async with self.stack.agents[host].client() as client:
                return await client.host()
        return asyncio.run(call())

    def copies(self, uid: str) -> dict[str, VmInfo]:
        """Every host whose agent holds the guest ``uid`` (running, paused, saved or defined)."""
        resident = {VmState.Running, VmState.Paused, VmState.Saved, VmState.Defined, VmState.Stopped}
        found = {}
        for host, agent in self.stack.agents.items():
            if not agent.alive:
                continue
            for vm in self.agent_vms(host):
                if vm.id == uid and vm.state in resident:
                    found[host] = vm
        return found

    def uid(self, namespace: str, name: str) -> str:
        return str(self.get("vsvm", name, namespace)["metadata"]["uid"])


@pytest.fixture(scope="session")
def fleet(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir: Path = tmp_path_factory.mktemp("stack")
    stack = Stack(kube.state, workdir)
    stack.install_crds()
    # Start from an empty fleet: earlier tests of this run (the API tests apply the samples, whose
    # hosts and VMs share names with this fleet) must not leak into what the operator manages.
    # No operator has run yet, so nothing carries a finalizer.
    kube.kubectl("delete", ",".join(PURGE), "--all", "-A", "--wait=true", "--timeout=60s")
    stack.start_hosts(HOSTS)
    stack.start_operator("--keep-finished-migrations", "50")
    f = Fleet(kube, stack)
    try:
        for plan in HOSTS:
            f.wait_phase("host", plan.name, None, {"Ready", "Cordoned"}, timeout=60)
        yield f
    finally:
        stack.stop()
