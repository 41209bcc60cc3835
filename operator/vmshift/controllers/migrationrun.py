"""One VirtualMachineMigration being driven: its identity, what has been decided so far, how it
writes its status, and the agent links and policy it uses. Shared by the migration controller's
live path (migrations.py) and its cold path (coldmove.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase
from vmshift.controllers import indexes, kubeapi
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.indexes import GROUP, VERSION
from vmshift.controllers.migration_decisions import (
    AgentRefusedError,
    MigrationFailedError,
    RoundLedger,
    Side,
    agent_failure_reason,
    migration_conditions,
)
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import IN_FLIGHT, VMEntry, index_vm
from vmshift.hypervisor.client import AgentError
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

    async def patch(self, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch the migration's status: the object as written (None when it is gone)."""
        self.status.update(status)
        self.last_patch = time.monotonic()
        return await kubeapi.patch_status("virtualmachinemigrations", self.namespace, self.name, status)

    async def set_phase(self, phase: MigrationPhase, reason: str, message: str,
                        **extra: Any) -> dict[str, Any] | None:
        written = await self.patch({"phase": phase.value, "observedGeneration": self.generation,
                                    "conditions": migration_conditions(self.status, phase, reason, message,
                                                                       self.generation),
                                    **extra})
        if self.vm_phase is not None and phase in IN_FLIGHT and phase is not self.vm_phase:
            await self.mark_vm(phase)
        return written

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


async def newest_vm(run: Run, cached: VMEntry | None) -> VMEntry | None:
    """The VM as the API server has it now when the cache has it on no host (or not at all): a migration
    created the moment its VM reports Running is not refused by a cache one watch event behind."""
    if cached is not None and cached.host:
        return cached
    read, body = await _read_vm(run)
    if not read:  # the cache's answer stands when the API cannot be asked
        return cached
    return index_vm(body) if body is not None else None


async def _read_vm(run: Run) -> tuple[bool, dict[str, Any] | None]:
    """(whether the API server answered, the VM's body as it has it now or None when it has none)."""
    try:
        return True, await kubeapi.get("virtualmachines", run.namespace, run.vm_name)
    except Exception as look:
        logging.getLogger("vmshift.migrations").info("migration %s: could not read %s (%r)", run.key, run.vm_name, look)
        return False, None


def as_failure(run: Run, exc: MigrationFailedError | AgentRefusedError | AgentError) -> MigrationFailedError:
    """The failure to record for what ended the daemon, with words from the closed set."""
    if isinstance(exc, MigrationFailedError):
        return exc
    if isinstance(exc, AgentRefusedError):
        return MigrationFailedError(
            agent_failure_reason(exc.error.code, exc.side),
            f"The agent of {exc.host} ({exc.side.value}) refused the migration of {run.vm_name}: {exc.error}. "
            f"{run.vm_name} stays on {run.source}.")
    return MigrationFailedError(  # AgentUnreachableError included
        agent_failure_reason(exc.code, None),
        f"An agent refused or failed the migration of {run.vm_name}: {exc}. {run.vm_name} stays on {run.source}.")


async def unless_deleted(run: Run, exc: Exception, verdict: MigrationFailedError) -> MigrationFailedError:
    """A source that no longer holds the VM because the VM is being deleted has not been lost: the
    deletion stopped the guest while this migration began. Ask the API server, not the cache (which
    may not have seen the deletion yet), and say so."""
    if not (isinstance(exc, AgentRefusedError) and exc.side is Side.source and exc.error.code == "NotFound"):
        return verdict
    read, body = await _read_vm(run)
    if not read:  # the agent's own words stand when the API cannot be asked
        return verdict
    if body is not None and not (body.get("metadata") or {}).get("deletionTimestamp"):
        return verdict
    return MigrationFailedError(FailureReason.VirtualMachineNotRunning,
                                f"{run.vm_name} was deleted while this migration began; its guest is stopped "
                                f"and there is nothing left to move.")
