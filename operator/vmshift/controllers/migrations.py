"""VirtualMachineMigration controller: a daemon per unfinished migration validates, queues, drives agents.

The decisions are the scheduler's (check_target, pick_target, choose_mode, select_policy, the
queue's admit); this module sequences them and talks to the two agents. Phases: Pending (validated,
waiting for slots) -> Validating (admitted: checked again, target prepared) -> Transferring ->
SwitchingOver -> Succeeded | Failed | Cancelled. Status is written at most about once a second.

Crash safety: the migration id given to the agents is the object's uid, and the agents are the
truth. A daemon that starts on a migration already past Pending asks the source agent for that id
and follows it, or, if the agent never heard of it, starts again from validation; a source agent
that lost it (restarted) makes the migration fail with SourceLost unless the target committed.
Only a deletion cancels: an operator that exits or pauses leaves its migrations to the agents
(stop_action). A switchover in doubt (the source cannot ask the target) stays SwitchingOver with
reason InDoubt until the target's own word settles it (target_verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from vmshift import metrics, timestamps
from vmshift.api import conditions as cond
from vmshift.api.labels import EVACUATION_LABEL
from vmshift.api.migration import VirtualMachineMigrationSpec
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase
from vmshift.controllers import events, indexes, kubeapi, virtualmachines
from vmshift.controllers.agents import RESIDENT
from vmshift.controllers.coldmove import is_stopped, move_cold
from vmshift.controllers.indexes import GROUP, VERSION, fleet, one, values
from vmshift.controllers.migration_decisions import (
    AgentRefusedError,
    ChosenMove,
    Leaving,
    MigrationFailedError,
    ProgressWatch,
    Side,
    StopAction,
    as_sentence,
    decide_move,
    leaving,
    progress_status,
    shown_phase,
    stop_action,
    switchover_go_due,
    switchover_message,
    target_verdict,
    unacknowledged_note,
    where_it_is_left,
    withdrawn_before_admission,
)
from vmshift.controllers.migrationrun import Run, agent_link, as_failure, newest_vm, policy_for, unless_deleted
from vmshift.controllers.runtime import AlreadyMigratingError, runtime
from vmshift.controllers.views import IN_FLIGHT, migrations_to_collect, problems, vm_view
from vmshift.controllers.vmstatus import POSTCOPY_LOST, definition
from vmshift.hypervisor.client import AgentError, AgentUnreachableError
from vmshift.hypervisor.protocol import (
    AutoConvergeSettings,
    IncomingMigrationRequest,
    IncomingVm,
    LinkShareSettings,
    MigrationRequest,
    MigrationStatus,
    MigrationTarget,
)
from vmshift.scheduling.policy import MigrationPolicyView, Rung, downtime_budget_ms
from vmshift.scheduling.queue import QueuedMigration, queue_terms

#: How long the operator keeps following a migration whose source agent does not answer.
AGENT_LOST_SECONDS = 20.0
#: Seconds between status patches while a migration transfers.
PATCH_INTERVAL = 1.0
POLL_INTERVAL = 0.25
#: How often a queued migration looks at the queue again when no migration gave slots back meanwhile.
QUEUE_POLL_SECONDS = 0.5
#: How long a source agent holds a converged live switchover for this operator's go (written first:
#: phase SwitchingOver). The guest runs on meanwhile, so the wait costs no downtime, only the link's
#: share of the hot set; a responsive operator answers within a poll and two calls (well under a
#: second), and an operator that is down (a restart takes longer than this anyway) delays each
#: converged migration by this much at most: the migration never hangs on the operator.
SWITCHOVER_WAIT_SECONDS = 5.0


def _finished(status: Mapping[str, Any] | None, **_: Any) -> bool:
    phase = (status or {}).get("phase")
    return phase is not None and MigrationPhase(phase).finished


async def _validate(run: Run, spec: VirtualMachineMigrationSpec, policies: list[MigrationPolicyView], *,
                    admitted: str | None = None) -> ChosenMove:
    """Read the VM and the fleet, then :func:`decide_move`. ``admitted``: the target the queue admitted."""
    vm = await newest_vm(run, one(indexes.vm_index, run.vm_key))
    if vm is None:
        raise MigrationFailedError(FailureReason.VirtualMachineNotRunning,
                                   f"There is no VirtualMachine {run.vm_name} in namespace {run.namespace}; "
                                   f"check spec.vmName.")
    run.vm = vm
    if not vm.host:
        raise MigrationFailedError(FailureReason.VirtualMachineNotRunning,
                                   f"{run.vm_name} runs on no host yet (phase {vm.phase}); migrate it once it runs.")
    if admitted is not None and run.source is not None and vm.host != run.source:
        raise MigrationFailedError(FailureReason.SourceLost,
                                   f"{run.vm_name} left {run.source} (it is on {vm.host} now) while this migration "
                                   f"waited; create the migration again if it should still move.")
    run.source = vm.host
    run.policy = policy_for(vm, policies)
    requested = spec.mode if spec.mode is not MigrationMode.Auto else vm.spec.migration.mode
    return decide_move(vm_view(vm), fleet(fresh=True), run.policy, requested, admitted or spec.targetHost)


async def _wait_for_slots(run: Run, target: str, stopped: kopf.DaemonStopped) -> bool:
    """Queue for slots on source and target and the cluster limit. False if deleted while waiting;
    Leaving if the operator exits or pauses (the request stays Pending for the next operator)."""
    rt = runtime()
    vm = run.vm
    assert vm is not None and run.source is not None
    created = run.body.get("metadata", {}).get("creationTimestamp") or ""
    request = QueuedMigration(
        key=run.key, namespace=run.namespace, vm=run.vm_key, source=run.source, target=target,
        created=timestamps.parse(created).timestamp() if created else time.time(),
        cpus=vm.spec.cpus, memory_mib=vm.spec.memoryMiB,
        **queue_terms(run.policy, evacuation=EVACUATION_LABEL in (run.body.get("metadata", {}).get("labels") or {})),
    )
    ticket = rt.gate.enqueue(request)
    told = ""
    while not ticket.admitted.is_set():
        if stopped:
            if stop_action(stopped.reason) is StopAction.Leave:
                raise Leaving()  # still queued: a paused operator that resumes finds its ticket again
            rt.gate.release(run.key)
            return False
        released = rt.gate_changed  # taken before looking, so a release meanwhile still wakes this wait
        rt.gate.admit_fleet(fleet(), run.policy.parallel_migrations_per_cluster)
        if ticket.admitted.is_set():
            break
        if ticket.waiting_for and ticket.waiting_for != told:
            told = ticket.waiting_for
            await run.set_phase(MigrationPhase.Pending, "WaitingForSlot",
                                f"{run.vm_name} -> {target} waits: {told}", sourceHost=run.source, targetHost=target)
        await _released_or_stopped(released, stopped)
    return True


async def _released_or_stopped(released: asyncio.Event, stopped: kopf.DaemonStopped) -> None:
    """Wait until a migration gives slots back, the daemon is stopped, or QUEUE_POLL_SECONDS pass (the
    fleet may have changed otherwise: a host came back, a cordon was lifted)."""
    waits = {asyncio.ensure_future(released.wait()), asyncio.ensure_future(stopped.wait(QUEUE_POLL_SECONDS))}
    _, pending = await asyncio.wait(waits, timeout=QUEUE_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


async def _prepare_and_start(run: Run, target: str, mode: MigrationMode, spec: VirtualMachineMigrationSpec) -> None:
    vm = run.vm
    assert vm is not None and run.source is not None
    source_link, target_link = agent_link(run.source), agent_link(target)
    try:
        info = await source_link.client.get_vm(vm.uid)
    except AgentError as exc:
        raise AgentRefusedError(Side.source, run.source, exc) from None
    base = definition(vm)
    incoming = IncomingVm(**base.model_dump(), vm_id=vm.uid, features=info.features,
                          vendor=source_link.info.vendor if source_link.info else None)
    try:
        grant = await target_link.client.prepare_incoming(
            IncomingMigrationRequest(migration_id=run.uid, vm=incoming, mode=mode))
    except AgentError as exc:
        raise AgentRefusedError(Side.target, target, exc) from None
    policy = run.policy
    timeout = spec.timeoutSeconds or policy.completion_timeout_seconds(vm.spec.memoryMiB)
    max_downtime = downtime_budget_ms(spec.maxDowntimeMs, vm.spec.migration.maxDowntimeMs, policy)
    request = MigrationRequest(
        migration_id=run.uid,
        vm_id=vm.uid,
        mode=mode,
        target=MigrationTarget(host=grant.host, port=grant.port, ticket=grant.ticket,
                               bandwidth_mbps=grant.bandwidth_mbps),
        threshold_ms=policy.threshold_ms,
        max_rounds=policy.max_rounds,
        stall_rounds=policy.stall_rounds,
        auto_converge=AutoConvergeSettings(enabled=Rung.AutoConverge in policy.ladder,
                                           initial_percent=policy.throttle[0], step_percent=policy.throttle[1],
                                           max_percent=policy.throttle[2]),
        fallback_to_quick=policy.allows_quick,
        fallback_to_postcopy=policy.allows_postcopy,
        max_downtime_ms=max_downtime,
        bandwidth_mbps=policy.bandwidth_mbps,
        link_share=LinkShareSettings.model_validate(spec.linkShare.model_dump()) if spec.linkShare else None,
        timeout_seconds=float(timeout),
        switchover_wait_seconds=SWITCHOVER_WAIT_SECONDS if mode is MigrationMode.Live else 0.0,
    )
    try:
        await source_link.client.start_migration(request)
    except AgentError as exc:
        with contextlib.suppress(AgentError):  # give the reservation back now, not at its expiry
            await target_link.client.cancel_migration(run.uid)
        raise AgentRefusedError(Side.source, run.source, exc) from None


async def _agent_view(run: Run) -> MigrationStatus | None:
    """The migration as the source agent reports it; the target's word when the source cannot answer."""
    rt = runtime()
    for host in (run.source, run.target):
        link = rt.agents.get(host or "")
        if link is None:
            continue
        try:
            return await link.client.get_migration(run.uid)
        except AgentUnreachableError:
            continue
        except AgentError as exc:
            if exc.status == 404:
                if host == run.source:
                    continue
                return None
            raise
    return None


async def _follow(run: Run, stopped: kopf.DaemonStopped, progress_timeout: float) -> MigrationStatus:
    """Mirror the agent's progress until the migration ends; cancel it if the object is deleted.

    When the operator exits or pauses it raises Leaving at once: the agents carry on, and the
    daemon of the next operator follows the same migration id from status.
    """
    rt = runtime()
    unanswered_since: float | None = None
    watch = ProgressWatch(progress_timeout)
    doubt = _Doubt()
    cancelled = False
    go_given = False
    while True:
        if stopped and stop_action(stopped.reason) is StopAction.Leave:
            raise Leaving()
        if stopped and not cancelled:
            cancelled = True
            link = rt.agents.get(run.source or "")
            if link is not None:
                try:
                    await link.client.cancel_migration(run.uid)
                except AgentError:
                    pass  # the follow loop below learns how it ended
        report = await _agent_view(run)
        if report is None:
            unanswered_since = unanswered_since or time.monotonic()
            if time.monotonic() - unanswered_since > AGENT_LOST_SECONDS:
                raise MigrationFailedError(FailureReason.SourceLost,
                                           f"The agent of {run.source} stopped answering during the migration of "
                                           f"{run.vm_name} and the target {run.target} holds no committed copy. "
                                           f"Check {run.source}; the VM is reported where the agents find it.")
            await asyncio.sleep(POLL_INTERVAL)
            continue
        unanswered_since = None
        if report.phase.finished:
            return report
        if report.in_doubt:
            await _in_doubt(run, report, doubt)
            await asyncio.sleep(POLL_INTERVAL)
            continue
        phase = shown_phase(report, cancelled)
        if watch.stalled(report.remaining_mib, time.monotonic()) and not cancelled \
                and phase is not MigrationPhase.SwitchingOver:
            link = rt.agents.get(run.source or "")
            if link is not None:
                try:
                    await link.client.cancel_migration(run.uid)
                except AgentError as exc:
                    if exc.code == "PastCommitPoint":  # too late: the target owns the VM; follow to the end
                        cancelled = True
                        continue
                    raise
            raise MigrationFailedError(FailureReason.Timeout,
                                       f"The remaining memory has not shrunk below {watch.best:.1f} MiB for "
                                       f"{progress_timeout:.0f} s (progressTimeoutSeconds of policy "
                                       f"{run.policy.name}); the migration was cancelled and {run.vm_name} stays on "
                                       f"{run.source}.")
        if time.monotonic() - run.last_patch >= PATCH_INTERVAL or run.status.get("phase") != phase.value:
            extra = progress_status(report, run.ledger)
            if report.mode != run.mode:
                extra["mode"] = report.mode.value
            message = switchover_message(run.vm_name, run.source, run.target, report) \
                if phase is MigrationPhase.SwitchingOver else _progress_message(run, report)
            await run.set_phase(phase, phase.value, message, **extra)
        if not go_given and switchover_go_due(report, run.status.get("phase"), cancelled):
            go_given = await _give_go(run)
            if go_given:
                continue  # the next report follows the switchover at once
        await asyncio.sleep(POLL_INTERVAL)


async def _give_go(run: Run) -> bool:
    """Tell the source to switch over (its status says SwitchingOver already); False if it cannot be told
    now (the next poll tries again; the source goes ahead by itself after SWITCHOVER_WAIT_SECONDS)."""
    link = runtime().agents.get(run.source or "")
    if link is None:
        return False
    try:
        await link.client.switchover(run.uid)
    except AgentError as exc:
        logging.getLogger("vmshift.migrations").info("switchover go for %s on %s: %s", run.key, run.source, exc)
        return False
    return True


@dataclass
class _Doubt:
    reported: bool = False
    asked_at: float = 0.0


#: Seconds between two questions to the target of a migration in doubt.
DOUBT_ASK_INTERVAL = 2.0


async def _in_doubt(run: Run, report: MigrationStatus, doubt: _Doubt) -> None:
    """The source sent the switchover but cannot ask the target whether it resumed: its copy stays
    paused. Say so once (a condition and a Warning event a person can act on), then ask the target
    ourselves (the operator may reach it when the source cannot) and pass its word on to the source."""
    if not doubt.reported:
        doubt.reported = True
        message = (f"In doubt: {run.source} sent the switchover of {run.vm_name} to {run.target} but cannot ask "
                   f"it whether it resumed the guest, so {run.vm_name} stays paused on {run.source} (resuming it "
                   f"could run two copies). It is settled as soon as {run.target}'s agent answers; if {run.target} "
                   f"is gone for good, restore its agent or power the host off and delete its Host.")
        await run.set_phase(MigrationPhase.SwitchingOver, "InDoubt", message, inDoubt=True)
        events.warn(run.body, reason="InDoubt", message=message)
        events.warn(run.vm_ref(), reason="MigrationInDoubt", message=message)
    if time.monotonic() - doubt.asked_at < DOUBT_ASK_INTERVAL:
        return
    doubt.asked_at = time.monotonic()
    target_link = runtime().agents.get(run.target or "")
    source_link = runtime().agents.get(run.source or "")
    if target_link is None or source_link is None:
        return
    status: MigrationStatus | None = None
    code: str | None = None
    holds: bool | None = None
    try:
        status = await target_link.client.cancel_migration(run.uid)
    except AgentUnreachableError:
        return
    except AgentError as exc:
        code = exc.code
        if code == "NotFound" and run.vm is not None:
            try:
                holds = (await target_link.client.get_vm(run.vm.uid)).state in RESIDENT
            except AgentError as vm_exc:
                holds = False if vm_exc.status == 404 else None
    verdict = target_verdict(status, code, holds)
    if verdict is None:
        return
    try:
        await source_link.client.resolve_migration(run.uid, verdict)
    except AgentError as exc:  # it settled itself meanwhile, or cannot be reached: the next report tells
        logging.getLogger("vmshift.migrations").info("resolving %s on %s: %s", run.key, run.source, exc)


def _progress_message(run: Run, report: MigrationStatus) -> str:
    return (f"Round {report.round}: {report.transferred_mib:.0f} MiB sent, {report.remaining_mib:.1f} MiB left, "
            f"guest dirties {report.dirty_rate_mib_ps:.0f} MiB/s, link {report.throughput_mbps:.0f} Mbps.")


async def _finish(run: Run, phase: MigrationPhase, *, report: MigrationStatus | None = None,
                  failure: MigrationFailedError | None = None) -> None:
    """Write the end: the migration's status, the VM's status, events and metrics."""
    rt = runtime()
    mode = (report.mode if report else run.mode) or MigrationMode.Live
    extra: dict[str, Any] = {"finishedAt": timestamps.rfc3339(micro=True), "inDoubt": None}
    if run.source:
        extra["sourceHost"] = run.source
    if run.target:
        extra["targetHost"] = run.target
    if report is not None:
        extra.update(progress_status(report, run.ledger))
        extra["downtimeMs"] = round(report.downtime_ms, 3) if report.downtime_ms is not None else None
        extra["durationMs"] = round(report.duration_ms, 1) if report.duration_ms is not None else None
        if report.source_digest and report.target_digest:
            extra["memoryVerified"] = report.source_digest == report.target_digest
        extra["mode"] = mode.value
        if report.switchover_acknowledged is not None:
            extra["switchoverAcknowledged"] = report.switchover_acknowledged
    if run.vm is not None:
        last = {"name": run.name, "mode": mode.value, "result": phase.value, "sourceHost": run.source,
                "targetHost": run.target, "downtimeMs": extra.get("downtimeMs"),
                "durationMs": extra.get("durationMs"), "finishedAt": extra["finishedAt"]}
        vm_status: dict[str, Any] = {"lastMigration": last, "migration": None}
        if phase is MigrationPhase.Succeeded:
            vm_status.update({"host": run.target, "phase": VirtualMachinePhase.Running.value})
        elif phase is MigrationPhase.Failed and report is not None and report.postcopy:
            # Post-copy lost its target: the guest runs nowhere (its source's QEMU is kept paused)
            vm_status.update({"phase": VirtualMachinePhase.Failed.value, "reason": POSTCOPY_LOST,
                              "message": failure.message if failure else None})
        elif run.status.get("phase") in {p.value for p in IN_FLIGHT}:
            vm_status["phase"] = VirtualMachinePhase.Running.value
        await kubeapi.patch_status("virtualmachines", run.namespace, run.vm_name, vm_status)
    if report is not None:
        metrics.TRANSFERRED_BYTES.labels(mode=mode.value).inc(max(report.transferred_mib, 0.0) * 1024 * 1024)
    if phase is MigrationPhase.Succeeded:
        message = (f"{run.vm_name} moved from {run.source} to {run.target} by {mode.value.lower()} migration "
                   f"with {extra.get('downtimeMs')} ms of downtime."
                   + (unacknowledged_note(report, SWITCHOVER_WAIT_SECONDS) if report else ""))
        await run.set_phase(phase, "Succeeded", message, **extra)
        events.info(run.body, reason="Succeeded", message=message)
        events.info(run.vm_ref(), reason="Migrated", message=message)
        metrics.MIGRATIONS.labels(mode=mode.value, result="Succeeded").inc()
        if report and report.downtime_ms is not None:
            metrics.DOWNTIME.labels(mode=mode.value).observe(report.downtime_ms / 1000)
        if report and report.duration_ms is not None:
            metrics.DURATION.labels(mode=mode.value).observe(report.duration_ms / 1000)
    else:
        reason = failure.reason if failure else FailureReason.Cancelled
        text = failure.message if failure else "The migration was cancelled."
        extra["failure"] = {"reason": reason.value, "message": text}
        await run.set_phase(phase, reason.value, text, **extra)
        events.warn(run.body, reason=reason.value, message=text)
        if run.vm is not None:
            events.warn(run.vm_ref(), reason=f"Migration{phase.value}", message=text)
        metrics.MIGRATIONS.labels(mode=mode.value, result=phase.value).inc()
        if phase is MigrationPhase.Failed and report is None:  # refused before any transfer
            metrics.MIGRATION_REFUSALS.labels(reason=reason.value).inc()
    rt.gate.release(run.key)
    rt.gate_released()
    await virtualmachines.recheck(run.vm_key, logging.getLogger("vmshift.migrations"))


async def _collect_garbage(run: Run) -> None:
    """Keep the newest few finished migrations the operator made for the VM; never touch unfinished
    ones, nor any a person or a GitOps tool applied, nor any that names a host whose agent does not
    answer (:func:`migrations_to_collect`)."""
    mine = indexes.migrations_by_vm.get(run.vm_key) or []
    rt = runtime()
    for old in migrations_to_collect(mine, rt.keep_finished_migrations, run.name, frozenset(rt.agents.unreachable())):
        await kubeapi.delete("virtualmachinemigrations", old.namespace, old.name)


@kopf.on.event(GROUP, VERSION, "virtualmachinemigrations")
async def acknowledge(type: str | None, body: kopf.Body, meta: kopf.Meta, status: kopf.Status, **_: Any) -> None:
    """Answer a new request at once (phase Pending, Ready=Unknown, Reconciling=True), before Kopf has
    added its finalizer and started the daemon: the user sees within a moment that it was taken."""
    if type not in (None, "ADDED") or status.get("phase") or meta.get("deletionTimestamp"):
        return
    generation = int(meta.get("generation") or 0)
    message = f"Accepted: checking whether {body['spec'].get('vmName')} can move."
    await kubeapi.patch_status("virtualmachinemigrations", meta["namespace"], meta["name"], {
        "phase": MigrationPhase.Pending.value, "observedGeneration": generation,
        "conditions": cond.dump(cond.first_look([], message, observed_generation=generation))})


# The daemon ends itself by writing a final phase (which also stops Kopf's filter from matching);
# a deletion sets ``stopped`` and the daemon cancels on the agents. Either way it gets a long grace
# (cancellation_backoff) to finish its writes before Kopf cancels it.
@kopf.daemon(GROUP, VERSION, "virtualmachinemigrations", when=lambda status, **_: not _finished(status),
             cancellation_backoff=90.0, cancellation_timeout=30.0)
async def drive_migration(
    name: str, namespace: str, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, body: kopf.Body,
    stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any,
) -> None:
    await indexes.ready()
    rt = runtime()
    # A restarted operator has heard from no agent yet: until each has answered once (or been
    # declared unreachable), a host not yet polled would look unreachable and fail the migration
    # for nothing, or its progress would be unknown.
    while not await rt.agents.wait_synced(indexes.host_names):
        if stopped:
            return
    if not rt.gate.seeded:
        flying = [m for m in values(indexes.migration_index) if m.in_flight]
        sizes = {m.vm_key: (vm.spec.cpus, vm.spec.memoryMiB)
                 for m in flying if (vm := one(indexes.vm_index, m.vm_key)) is not None}
        rt.gate.seed(flying, sizes)
    try:
        wanted: VirtualMachineMigrationSpec | None = VirtualMachineMigrationSpec.model_validate(dict(spec))
        refused = ""
    except ValidationError as exc:
        wanted, refused = None, problems("spec", exc)
    run = Run(name=name, namespace=namespace, uid=meta["uid"],
              vm_name=wanted.vmName if wanted is not None else str(spec.get("vmName") or ""),
              generation=int(meta.get("generation") or 0), body=body, status=dict(status))
    run.source, run.target = status.get("sourceHost"), status.get("targetHost")
    run.mode = MigrationMode(status["mode"]) if status.get("mode") else None
    phase = MigrationPhase(status.get("phase") or MigrationPhase.Pending)
    run.vm = one(indexes.vm_index, run.vm_key)
    if run.vm is not None:
        run.policy = policy_for(run.vm, values(indexes.policy_index))
    try:
        if wanted is None:
            raise MigrationFailedError(FailureReason.InvalidSpec,
                                       f"The spec of migration {name} is refused: {refused}. Nothing was moved; "
                                       f"delete it and create a correct one.")
        if phase in (MigrationPhase.Pending, MigrationPhase.Validating):
            report = await _agent_view(run) if phase is MigrationPhase.Validating else None
            if report is None:
                if not status.get("conditions"):
                    await run.set_phase(MigrationPhase.Pending, "Validating",
                                        f"Checking whether {run.vm_name} can move.")
                run.target = wanted.targetHost
                stopped_vm = one(indexes.vm_index, run.vm_key)
                if stopped_vm is not None and is_stopped(stopped_vm):
                    await move_cold(run, stopped_vm, wanted)
                    await _collect_garbage(run)
                    return
                move = await _validate(run, wanted, values(indexes.policy_index))
                target, mode, why = move.target, move.mode, move.why
                run.target, run.mode = target, mode
                try:
                    rt.gate.claim(run.vm_key, run.key)
                except AlreadyMigratingError as exc:
                    raise MigrationFailedError(
                        FailureReason.AlreadyMigrating,
                        f"{run.vm_name} already has a migration in flight ({exc.holder}); this request is refused. "
                        f"Wait for it to end, or delete it, then ask again.") from None
                if not await _wait_for_slots(run, target, stopped):
                    await _finish(run, MigrationPhase.Cancelled)
                    return
                # A second look at the admitted target (the fleet moved while this request waited).
                move = await _validate(run, wanted, values(indexes.policy_index), admitted=target)
                mode, why = move.mode, move.why
                run.mode = mode
                if stopped and stop_action(stopped.reason) is StopAction.Cancel:
                    # Deleted while it was being admitted (a drain withdrawing it, a person): nothing
                    # was sent yet, so it ends here rather than starting a move nobody wants.
                    await _finish(run, MigrationPhase.Cancelled)
                    return
                # Both before any agent acts (a restarted daemon finds Validating, asks the source); one round trip.
                written, _vm = await asyncio.gather(
                    run.set_phase(MigrationPhase.Validating, "Admitted", why, sourceHost=run.source,
                                  targetHost=target, mode=mode.value, policy=run.policy.name),
                    run.mark_vm(MigrationPhase.Validating))
                if withdrawn_before_admission(written):
                    await _finish(run, MigrationPhase.Cancelled)
                    return
                await _prepare_and_start(run, target, mode, wanted)
                await run.set_phase(MigrationPhase.Transferring, "Transferring",
                                    f"Moving {run.vm_name} from {run.source} to {target}: {why}",
                                    startedAt=timestamps.rfc3339(micro=True))
                events.info(body, reason="Started",
                              message=f"Moving {run.vm_name} from {run.source} to {target}: {why}")
        else:
            rt.gate.claim(run.vm_key, run.key)
            run.vm_phase = phase if phase in IN_FLIGHT else None
        report = await _follow(run, stopped, run.policy.progress_timeout_seconds)
        if report.phase is MigrationPhase.Succeeded:
            await _finish(run, MigrationPhase.Succeeded, report=report)
        elif report.phase is MigrationPhase.Cancelled or stopped:
            await _finish(run, MigrationPhase.Cancelled, report=report,
                          failure=MigrationFailedError(FailureReason.Cancelled,
                                                       f"The migration was cancelled before the switchover; "
                                                       f"{run.vm_name} keeps running on {run.source}, unchanged."))
        else:
            failure = report.failure
            await _finish(run, MigrationPhase.Failed, report=report, failure=MigrationFailedError(
                failure.reason if failure else FailureReason.TargetLost,
                as_sentence(failure.message if failure else "The agents reported a failure without a reason")
                + where_it_is_left(run.vm_name, run.source, run.target, report)))
    except Leaving:
        logger.info(f"migration {run.key}: the operator stops ({stopped.reason}); the agents carry on and "
                    f"the next operator follows it")
        return  # the claim and slots stay held: the migration is still in flight
    except (MigrationFailedError, AgentRefusedError, AgentError) as exc:
        verdict = await unless_deleted(run, exc, as_failure(run, exc))
        if leaving(stopped) or rt.stopping:
            # Seen while the operator stops: the host daemons drop their agent links then, so a
            # healthy agent may look unreachable. The next operator looks again.
            logger.info(f"migration {run.key}: the operator stops ({stopped.reason}); not recording "
                        f"{verdict.reason.value} seen meanwhile ({verdict.message}); the next operator looks again")
            return
        logger.info(f"migration {run.key} failed: {verdict.reason}: {verdict.message}")
        await _finish(run, MigrationPhase.Failed, failure=verdict)
    await _collect_garbage(run)
