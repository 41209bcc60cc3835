"""One VirtualMachineMigration being driven: its identity, what has been decided so far, how it
writes its status, and the agent links and policy it uses. Shared by the migration controller's
live path (migrations.py) and its cold path (coldmove.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase
from vmshift.controllers import indexes, kubeapi
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.indexes import GROUP, VERSION
from vmshift.controllers.migration_decisions import MigrationFailedError, RoundLedger, migration_conditions
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import IN_FLIGHT, VMEntry
from vmshift.scheduling.policy import DEFAULT_POLICY, MigrationPolicyView, select_policy


@dataclass
class Run:
    """One migration being driven: the object's identity and what has been decided so far."""

    name: str
    namespace: str
    uid: str
    vm_name: str
    generation: int
    body: kopf.Body
    status: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    target: str | None = None
    mode: MigrationMode | None = None
    policy: MigrationPolicyView = DEFAULT_POLICY
    vm: VMEntry | None = None
    started: float = field(default_factory=time.monotonic)
    last_patch: float = 0.0
    ledger: RoundLedger = field(default_factory=RoundLedger)
    #: The phase last written to the VM's status.migration.
    vm_phase: MigrationPhase | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def vm_key(self) -> str:
        return f"{self.namespace}/{self.vm_name}"

    async def patch(self, status: dict[str, Any]) -> None:
        self.status.update(status)
        self.last_patch = time.monotonic()
        await kubeapi.patch_status("virtualmachinemigrations", self.namespace, self.name, status)

    async def set_phase(self, phase: MigrationPhase, reason: str, message: str, **extra: Any) -> None:
        await self.patch({"phase": phase.value, "observedGeneration": self.generation,
                          "conditions": migration_conditions(self.status, phase, reason, message, self.generation),
                          **extra})
        if self.vm_phase is not None and phase in IN_FLIGHT and phase is not self.vm_phase:
            await self.mark_vm(phase)

    async def mark_vm(self, phase: MigrationPhase) -> None:
        """The VM's status.migration follows the migration's phase while it is in flight."""
        self.vm_phase = phase
        await kubeapi.patch_status("virtualmachines", self.namespace, self.vm_name, {
            "phase": VirtualMachinePhase.Migrating.value,
            "migration": {"name": self.name, "phase": phase.value, "targetHost": self.target}})

    def vm_ref(self) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
                "metadata": {"name": self.vm_name, "namespace": self.namespace,
                             "uid": self.vm.uid if self.vm else ""}}


def agent_link(host: str | None) -> AgentLink:
    link = runtime().agents.get(host or "")
    if link is None or not link.reachable:
        raise MigrationFailedError(FailureReason.AgentUnreachable,
                                   f"The agent of {host} is not reachable; the VM stays where it is. "
                                   f"Check the agent, then create the migration again.")
    return link


def policy_for(vm: VMEntry, policies: list[MigrationPolicyView]) -> MigrationPolicyView:
    requested = vm.spec.migration.policy
    return select_policy(vm.labels, vm.namespace, policies, requested=requested,
                         namespace_labels=indexes.namespace_labels(vm.namespace)) or DEFAULT_POLICY
