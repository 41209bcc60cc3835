"""A stopped VM asked to move is re-homed cold, as vSphere and SCVMM move a powered-off VM: its
definition is defined on the target and deleted on the source; no memory moves (decision:
scheduling/cold.py)."""

from __future__ import annotations

import contextlib
import logging

from vmshift import metrics, timestamps
from vmshift.api.migration import VirtualMachineMigrationSpec
from vmshift.api.reasons import FailureReason, MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase
from vmshift.controllers import events, indexes, kubeapi, virtualmachines
from vmshift.controllers.indexes import fleet, values
from vmshift.controllers.migration_decisions import AgentRefusedError, MigrationFailedError, Side
from vmshift.controllers.migrationrun import Run, agent_link, policy_for
from vmshift.controllers.runtime import AlreadyMigratingError, runtime
from vmshift.controllers.views import VMEntry, vm_view
from vmshift.controllers.vmstatus import definition
from vmshift.hypervisor.client import AgentError
from vmshift.hypervisor.protocol import VmState
from vmshift.scheduling.cold import ColdRefusal, decide_cold_move


def is_stopped(vm: VMEntry) -> bool:
    """A VM that spec.running keeps stopped and that status shows stopped on a host: it moves cold."""
    return not vm.spec.running and vm.phase is VirtualMachinePhase.Stopped and bool(vm.host)


async def move_cold(run: Run, vm: VMEntry, spec: VirtualMachineMigrationSpec) -> None:
    """Re-home a stopped VM (:func:`decide_cold_move`): define it on the target, delete it on the
    source, write the end. Run again after a crash, it finds the definition already moved."""
    rt = runtime()
    run.vm, run.source = vm, vm.host
    run.policy = policy_for(vm, values(indexes.policy_index))
    decision = decide_cold_move(vm_view(vm), fleet(fresh=True), spec.targetHost)
    if isinstance(decision, ColdRefusal):
        raise MigrationFailedError(decision.reason, decision.message)
    run.target = decision.target
    try:
        rt.gate.claim(run.vm_key, run.key)
    except AlreadyMigratingError as exc:
        raise MigrationFailedError(FailureReason.AlreadyMigrating,
                                   f"{run.vm_name} already has a migration in flight ({exc.holder}); this request "
                                   f"is refused. Wait for it to end, or delete it, then ask again.") from None
    source_link, target_link = agent_link(run.source), agent_link(run.target)
    try:
        info = await source_link.client.get_vm(vm.uid)
    except AgentError as exc:
        raise AgentRefusedError(Side.source, run.source or "", exc) from None
    if info.state not in (VmState.Stopped, VmState.Defined):
        raise MigrationFailedError(FailureReason.VirtualMachineNotRunning,
                                   f"{run.vm_name} is {info.state.value} on {run.source}, not stopped, so it cannot "
                                   f"move cold; create the migration again to move it live.")
    started = timestamps.rfc3339()
    # The target is on record before it holds a definition: a look for this VM's guest after a crash
    # here waits for that agent's answer (whereabouts.may_hold).
    await run.patch({"sourceHost": run.source, "targetHost": run.target})
    # the guest keeps the drivers it has (an import may have changed them since it was defined)
    wanted = definition(vm).model_copy(update={"drivers": list(info.drivers)})
    try:
        await target_link.client.define_vm(vm.uid, wanted)
    except AgentError as exc:
        raise AgentRefusedError(Side.target, run.target, exc) from None
    try:
        await source_link.client.delete_vm(vm.uid)
    except AgentError as exc:
        with contextlib.suppress(AgentError):  # leave one definition: the source's
            await target_link.client.delete_vm(vm.uid)
        raise AgentRefusedError(Side.source, run.source or "", exc) from None
    finished = timestamps.rfc3339()
    await kubeapi.patch_status("virtualmachines", run.namespace, run.vm_name, {
        "host": run.target, "phase": "Stopped", "processor": None, "migration": None,
        "lastMigration": {"name": run.name, "result": MigrationPhase.Succeeded.value, "sourceHost": run.source,
                          "targetHost": run.target, "downtimeMs": 0, "finishedAt": finished}})
    await run.set_phase(MigrationPhase.Succeeded, "MovedCold", decision.message, sourceHost=run.source,
                        targetHost=run.target, policy=run.policy.name, startedAt=started, finishedAt=finished,
                        downtimeMs=0, inDoubt=None)
    events.info(run.body, reason="MovedCold", message=decision.message)
    events.info(run.vm_ref(), reason="MovedCold", message=decision.message)
    metrics.MIGRATIONS.labels(mode="Cold", result="Succeeded").inc()
    rt.gate.release(run.key)
    rt.gate_released()
    await virtualmachines.recheck(run.vm_key, logging.getLogger("vmshift.migrations"))
