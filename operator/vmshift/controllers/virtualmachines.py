"""VirtualMachine controller: place new VMs, start and stop guests, keep status true, ask for migrations.

Thin and level-triggered: every watch event and a slow timer run :func:`reconcile`, which observes
(the index and the agents, which are the truth about where a guest runs), decides (placement and
status are plain functions) and acts (define/start/stop on an agent, a status patch, a migration
object). A pass can run twice or after a crash and do no harm: the host is written to status before
the guest starts, so a crash in between leaves a trail the next pass follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import kopf

from vmshift import metrics, timestamps
from vmshift.api import conditions as cond
from vmshift.api.labels import DRIVERS_ANNOTATION, VM_LABEL
from vmshift.api.migration import VirtualMachineMigrationSpec
from vmshift.api.virtualmachine import VirtualMachinePhase as Phase
from vmshift.controllers import events, indexes, kubeapi
from vmshift.controllers.agents import RESIDENT, AgentDirectory
from vmshift.controllers.guestcleanup import collect_orphans, resolve_duplicates
from vmshift.controllers.indexes import GROUP, HOSTS, VERSION, fleet, values
from vmshift.controllers.legacyfinalizer import holds_legacy_finalizer, release_legacy_finalizer
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import VMEntry, index_vm, operator_labels, vm_view
from vmshift.controllers.vmstatus import (
    DEFERRED_RESYNC_SECONDS,
    RESYNC_SECONDS,
    DefinitionError,
    definition,
    ever_placed,
    failed_start_status,
    fingerprint,
    label_rechecks,
    migration_name,
    needs_resync,
    report_suffices,
    resync_candidates,
    running_status,
    selector_candidates,
    start_baseline,
    start_outcome_unknown,
)
from vmshift.controllers.whereabouts import blocking, may_hold
from vmshift.hypervisor.client import AgentError, AgentUnreachableError
from vmshift.hypervisor.protocol import VmInfo, VmState
from vmshift.scheduling.fleet import Fleet, VMView
from vmshift.scheduling.placement import Refusal, plan_placement

#: How many VMs a resync pass reads and reconciles at once.
RESYNC_IN_FLIGHT = 16
#: How often the resync's wait looks whether a VM was deferred meanwhile.
RESYNC_CHECK_SECONDS = 1.0
#: The resync's clock (a test replaces it).
_clock = time.monotonic


def _lock(key: str) -> asyncio.Lock:
    return runtime().vm_locks.setdefault(key, asyncio.Lock())


class _UnknownLocation(Exception):
    """The agent that would know where the guest lives does not answer now (the hosts that do not, by name)."""


def _defer(key: str, why: str, logger: kopf.Logger | logging.Logger) -> None:
    """Look at the VM again at the next short resync pass, and say why (once per reason)."""
    rt = runtime()
    rt.deferred.add(key)
    if rt.deferral_told.get(key) != why:
        rt.deferral_told[key] = why
        logger.info(f"{key}: looked at again within {DEFERRED_RESYNC_SECONDS:.0f} s: {why}")


def _moved_here(key: str) -> bool:
    """Did a migration of this VM end in this process? Then a source's report from before its
    switchover may still show the guest there (and a body from before it the source in status):
    only the agent's live answer says where it runs."""
    finished = runtime().gate.finished
    return any(m.key in finished for m in indexes.migrations_by_vm.get(key) or [])


async def _locate(entry: VMEntry, ever: bool = False,
                  status: Mapping[str, Any] | None = None) -> tuple[str, VmInfo] | None:
    """Where the guest lives: (host, info), or None when nowhere; _UnknownLocation when it cannot be known now.

    ``ever``: the VM had a host once. Then "nowhere" needs a live look at every agent (the reports
    may be a poll old), and an agent that does not answer makes the location unknown if it may hold
    the guest (:func:`whereabouts.may_hold`: the hosts the VM's records name, and those whose last
    report listed it); an unrelated silent host does not. ``status``: the VM's status as read.
    """
    rt = runtime()
    # A placement this process just made may not be in the (older) body yet: follow it too.
    hinted = rt.placements.get(entry.key)
    host = entry.host or (hinted[0] if hinted else None)
    if host:
        link = rt.agents.get(host)
        if link is None or link.info is None:
            raise _UnknownLocation(host)
        reported = link.vms.get(entry.uid)
        if (link.reachable and report_suffices(reported, link.reported_at, rt.started_at, entry.spec.running)
                and not _moved_here(entry.key)):
            assert reported is not None
            return host, reported
        try:
            info: VmInfo | None = await link.client.get_vm(entry.uid)
        except AgentUnreachableError:
            raise _UnknownLocation(host) from None
        except AgentError as exc:
            if exc.status != 404:
                raise _UnknownLocation(host) from None
            info = None
        if info is not None and info.state in RESIDENT:
            return host, info
    found = rt.agents.locate(entry.uid)
    if len(found) >= 1:
        return found[0]
    if not (host or ever):
        return None
    candidates = may_hold({**(status or {}), "host": entry.host}, hinted[0] if hinted else None,
                          indexes.migrations_by_vm.get(entry.key) or [], rt.agents.reported_by(entry.uid))
    silent = blocking(candidates, rt.agents.unreachable())
    if silent:
        raise _UnknownLocation(", ".join(silent[:5]))
    live, unanswered = await rt.agents.live_locate(entry.uid)
    if live:
        return live[0]
    silent = blocking(candidates, unanswered)
    if silent:
        raise _UnknownLocation(", ".join(silent[:5]))
    return None


async def _patch(entry: VMEntry, status: dict[str, Any], previous: Mapping[str, Any]) -> bool:
    """Write ``status`` unless it changes nothing; True when written."""
    if cond.changes_nothing(status, previous):
        return False
    await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, status)
    return True


def _key(body: Mapping[str, Any]) -> str:
    return f"{body['metadata'].get('namespace')}/{body['metadata'].get('name')}"


def settled(body: Mapping[str, Any], agents: AgentDirectory) -> bool:
    """Did a reconcile already find this very body in order, and do the agents still agree?"""
    return runtime().settled.get(_key(body)) == fingerprint(body) and not needs_resync(index_vm(body), agents)


async def reconcile(body: Mapping[str, Any], logger: kopf.Logger | logging.Logger) -> None:
    entry = index_vm(body)
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    rt = runtime()
    previous: Mapping[str, Any] = body.get("status") or {}
    generation = entry.generation
    async with _lock(entry.key):
        flights = [m.key for m in (indexes.migrations_by_vm.get(entry.key) or []) if m.in_flight]
        if rt.gate.moving(entry.key, flights):
            return  # the migration's daemon owns the VM's status while it moves
        if entry.problem is not None:
            await _refuse_spec(entry, body, previous)
            return
        if not await rt.agents.wait_synced(indexes.host_names):
            # An agent not heard from yet may hold this guest (adoption after a restart), and a
            # Migratable condition computed before every agent answered would undercount hosts.
            _defer(entry.key, "not every agent has answered yet", logger)
            return
        try:
            located = await _locate(entry, ever_placed(previous), previous)
        except _UnknownLocation as exc:
            _defer(entry.key, f"where its guest runs is unknown while the agent(s) of {exc} do not answer", logger)
            return
        view = vm_view(entry)
        if located is None:
            if not entry.spec.running:
                status = {"observedGeneration": generation, "phase": Phase.Stopped.value, "host": None,
                          "conditions": cond.dump(cond.ready(previous.get("conditions") or [], True, "Stopped",
                                                             f"{entry.name} is stopped as spec.running asks.",
                                                             observed_generation=generation))}
                await _patch(entry, status, previous)
                return
            if not previous.get("conditions"):
                # kstatus must not read the VM as healthy while it is being placed.
                first = {"observedGeneration": generation, "phase": Phase.Scheduling.value, "conditions": cond.dump(
                    cond.first_look([], f"Placing {entry.name}.", observed_generation=generation))}
                await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, first)
                previous = first
            await _place(entry, body, view, previous, logger)
            return
        host, info = located
        if not entry.spec.running and info.state in (VmState.Running, VmState.Paused):
            info = await rt.agents.get(host).client.stop_vm(entry.uid)  # type: ignore[union-attr]
        elif entry.spec.running and info.state in (VmState.Defined, VmState.Stopped):
            if entry.host != host:  # as a placement does: the host a guest is started on is in status first
                rt.placements.expect(entry.key, (host, entry.spec.cpus, entry.spec.memoryMiB))
                await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {"host": host})
            info = await rt.agents.get(host).client.start_vm(  # type: ignore[union-attr]
                entry.uid, baseline=start_baseline(vm_view(entry), host, fleet()))
        if entry.host == host:
            rt.placements.observed(entry.key)  # the index shows the placement now
        now_fleet = fleet()
        view = vm_view(entry, host=host)
        if info.features:  # the agent is the truth about what the guest was started with
            where = now_fleet.host(host)
            view = replace(view, guest_features=frozenset(info.features),
                           guest_vendor=where.vendor if where else view.guest_vendor,
                           guest_cpu_model=where.cpu_model if where else view.guest_cpu_model)
        status = running_status(view, info, host, now_fleet, generation, previous,
                                wants_running=entry.spec.running)
        if cond.changes_nothing(status, previous):
            rt.settled.expect(entry.key, fingerprint(body))
        else:
            written = await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, status)
            if written is not None:
                rt.echo_pending.expect(entry.key, None)
            if written is not None and rt.placements.get(entry.key) is None:
                # The object as written is what this pass found right: its echo (the same object,
                # at the same resourceVersion) needs no second pass. A later change by anyone else
                # is another object, and a placement still waiting for the index to show it is
                # cleared by the echo's pass, so that one still runs.
                rt.settled.expect(entry.key, fingerprint(written))
        metrics.VMS_IN_SYNC.set(len(rt.settled))
        await _ask_for_migration(entry, view, host, status, now_fleet)


async def _place(entry: VMEntry, body: Mapping[str, Any], view: VMView, previous: Mapping[str, Any],
                 logger: kopf.Logger | logging.Logger) -> None:
    rt = runtime()
    generation = entry.generation
    try:
        wanted = definition(entry)
    except DefinitionError as exc:
        await _refuse_definition(entry, body, previous, str(exc))
        return
    async with rt.placement_lock:
        now_fleet = fleet(fresh=True)  # placements made while this pass waited for the lock count
        decision = plan_placement(view, now_fleet)
        if isinstance(decision, Refusal):
            conditions = cond.ready(previous.get("conditions") or [], False, "Unschedulable", decision.message,
                                    observed_generation=generation)
            conditions = cond.stalled(conditions, True, decision.reason.value, decision.message,
                                      observed_generation=generation)
            status = {"observedGeneration": generation, "phase": Phase.Pending.value, "host": None,
                      "reason": decision.reason.value, "message": decision.message,
                      "conditions": cond.dump(conditions)}
            if not cond.changes_nothing(status, previous):
                events.warn(body, reason="FailedScheduling", message=decision.message)
                metrics.MIGRATION_REFUSALS.labels(reason=decision.reason.value).inc()
            await _patch(entry, status, previous)
            return
        host = decision.host
        rt.placements.expect(entry.key, (host, view.cpus, view.memory_mib))
    conditions = cond.reconciling(previous.get("conditions") or [], True, "Starting",
                                  f"Starting {entry.name} on {host}.", observed_generation=generation)
    # The host goes into status before the guest starts: a crash in between leaves a trail.
    await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {
        "observedGeneration": generation, "phase": Phase.Starting.value, "host": host, "reason": None,
        "message": None,
        "conditions": cond.dump(conditions)})
    link = rt.agents.get(host)
    if link is None:
        raise kopf.TemporaryError(f"no agent link for {host} yet", delay=2)
    try:
        await link.client.define_vm(entry.uid, wanted)
        info = await link.client.start_vm(entry.uid, baseline=start_baseline(view, host, now_fleet))
    except AgentError as exc:
        if start_outcome_unknown(exc):
            # The agent may have started the guest before the answer was lost: keep the host in status
            # so the next pass asks that agent, and place nowhere else until it has answered.
            _defer(entry.key, f"no answer from {host} to the start", logger)
            message = (f"Starting {entry.name} on {host}: no answer from its agent ({exc}). The guest may be "
                       f"running there; the operator asks again before it chooses another host.")
            events.warn(body, reason="StartUnconfirmed", message=message)
            await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {
                "reason": "StartUnconfirmed", "message": message})
            return
        with contextlib.suppress(AgentError):  # a definite refusal: undo a definition it may have kept
            await link.client.delete_vm(entry.uid)
        rt.placements.observed(entry.key)
        message = (f"Starting {entry.name} on {host} failed: {exc}. The operator places it again at its next "
                   f"pass (at most {RESYNC_SECONDS:.0f} s).")
        events.warn(body, reason="FailedStart", message=message)
        await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name,
                                   failed_start_status(previous, generation, message))
        return
    events.info(body, reason="Started", message=f"Started {entry.name} on {host} (score {decision.score:.1f}).")
    logger.info(f"started {entry.key} on {host}")
    started = {"startedAt": timestamps.rfc3339(micro=True)}
    chosen = now_fleet.host(host)
    started_view = replace(view.started_on(chosen), guest_features=frozenset(info.features)) if chosen else view
    status = running_status(started_view, info, host,
                            now_fleet, generation, {**previous, "conditions": cond.dump(conditions)})
    await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {**status, **started})


async def _refuse_spec(entry: VMEntry, body: Mapping[str, Any], previous: Mapping[str, Any]) -> None:
    """The model refuses the VM's spec (stored before a rule changed): say so, change nothing else."""
    message = (f"The spec of {entry.name} is refused: {entry.problem}. The operator leaves the VM as it is "
               f"until the spec is fixed.")
    conditions = cond.ready(previous.get("conditions") or [], False, "InvalidSpec", message,
                            observed_generation=entry.generation)
    conditions = cond.stalled(conditions, True, "InvalidSpec", message, observed_generation=entry.generation)
    status = {"observedGeneration": entry.generation, "reason": "InvalidSpec", "message": message,
              "conditions": cond.dump(conditions)}
    if not cond.changes_nothing(status, previous):
        events.warn(body, reason="InvalidSpec", message=message)
    await _patch(entry, status, previous)


async def _refuse_definition(entry: VMEntry, body: Mapping[str, Any], previous: Mapping[str, Any],
                             problem: str) -> None:
    """The VM cannot be started as it stands: say so (Pending, Stalled, a Warning event), start nothing.
    A new pass after the person fixes the spec or the annotation places it as usual."""
    generation = entry.generation
    message = (f"{entry.name} cannot be started: {problem}. Fix the VM (its spec or its "
               f"{DRIVERS_ANNOTATION} annotation); it stays Pending until then.")
    conditions = cond.ready(previous.get("conditions") or [], False, "InvalidDefinition", message,
                            observed_generation=generation)
    conditions = cond.stalled(conditions, True, "InvalidDefinition", message, observed_generation=generation)
    status = {"observedGeneration": generation, "phase": Phase.Pending.value, "host": None,
              "reason": "InvalidDefinition", "message": message, "conditions": cond.dump(conditions)}
    if not cond.changes_nothing(status, previous):
        events.warn(body, reason="InvalidDefinition", message=message)
    await _patch(entry, status, previous)


async def _ask_for_migration(entry: VMEntry, view: VMView, host: str, status: Mapping[str, Any],
                             now_fleet: Fleet) -> None:
    """Create the migration the spec implies, once per spec generation: to spec.placement.host when
    it names another host, or to a host the scheduler picks when the current one no longer matches
    spec.placement.hostSelector."""
    desired = view.desired_host
    placed: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Placed"), {})
    candidates: list[str] = []
    if desired and desired != host:
        why = f"spec.placement.host changed to {desired}"
    elif not desired and placed.get("reason") == "SelectorMismatch":
        why = f"{host} no longer matches spec.placement.hostSelector"
        candidates = selector_candidates(view, now_fleet)
        if not candidates:
            return  # nowhere to go: Placed=False says so; a host that gains the labels asks again
    else:
        return
    name = migration_name(entry.name, desired, entry.generation, candidates)
    existing = {m.name for m in indexes.migrations_by_vm.get(entry.key) or []}
    if name in existing:
        return
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualMachineMigration",
        "metadata": {
            "name": name,
            "namespace": entry.namespace,
            "labels": operator_labels(**{VM_LABEL: entry.name}),
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "name": entry.name,
                                 "uid": entry.uid, "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": VirtualMachineMigrationSpec(vmName=entry.name, mode=entry.spec.migration.mode, reason=why,
                                            targetHost=desired,
                                            maxDowntimeMs=entry.spec.migration.maxDowntimeMs).to_api(),
    }
    await kubeapi.create("virtualmachinemigrations", entry.namespace, body)


async def vm_event(type: str | None, body: Mapping[str, Any], logger: kopf.Logger | logging.Logger,
                   **_: Any) -> None:
    if type == "DELETED":
        runtime().handled.discard(_key(body))
        runtime().settled.observed(_key(body))
        runtime().deferred.discard(_key(body))
        runtime().deferral_told.pop(_key(body), None)
        metrics.VMS_IN_SYNC.set(len(runtime().settled))
        await indexes.ready()
        await release(body, logger)
        return
    await indexes.ready()
    if holds_legacy_finalizer(body) and (body.get("metadata") or {}).get("deletionTimestamp"):
        # What the finalizer of an earlier release held the deletion for: the guest stopped, then let go.
        await release(body, logger)
        meta = body.get("metadata") or {}
        await release_legacy_finalizer("virtualmachines", meta.get("namespace"), str(meta.get("name")), body)
        return
    runtime().handled.add(_key(body))
    if settled(body, runtime().agents):
        return
    await _reconcile_logged(body, logger)


async def recheck(key: str, logger: kopf.Logger | logging.Logger) -> None:
    """A migration let go of the VM: reconcile it now unless a reconcile since found it in order. The
    echo of the migration's last write to the VM can arrive while the migration still holds it, and
    then that event's reconcile stood aside and no later event comes."""
    if key in runtime().settled:
        return
    namespace, name = key.split("/", 1)
    body = await kubeapi.get("virtualmachines", namespace, name)
    if body is None:
        runtime().resync_wake.set()  # deleted meanwhile: its guest is an orphan the resync collects
        return
    await _reconcile_logged(body, logger)


async def _reconcile_logged(body: Mapping[str, Any], logger: kopf.Logger | logging.Logger) -> None:
    rt = runtime()
    key = _key(body)
    rt.settled.observed(key)
    metrics.VMS_IN_SYNC.set(len(rt.settled))
    rt.deferred.discard(key)
    try:
        await reconcile(body, logger)
        if key not in rt.deferred:
            rt.deferral_told.pop(key, None)
    except AgentError as exc:
        runtime().deferred.add(_key(body))
        metrics.RECONCILE_ERRORS.labels(kind="VirtualMachine").inc()
        logger.warning(f"reconcile of {body['metadata']['name']} deferred: {exc}")


async def resync_forever(logger: logging.Logger) -> None:
    """Catch what no event announces: a guest lost with its host, an agent back after an outage,
    room freed for a VM that was refused.

    One loop for the fleet instead of a timer per VM: a pass compares every cached VM with the
    agents' last reports and the scheduler's view (no API calls) and reconciles only the VMs
    :func:`resync_candidates` picks, each read fresh from the API server. It runs under the
    operator's supervisor (startup.py), which restarts it if anything escapes a pass.
    """
    await indexes.ready()
    rt = runtime()
    woken = rt.resync_wake
    while True:
        started = _clock()
        # A VM deferred because an agent did not answer is looked at again within DEFERRED_RESYNC_SECONDS,
        # not a full period later, also when it was deferred while this wait had already begun.
        while not woken.is_set():
            soon = rt.deferred or rt.orphans_moving
            left = started + (DEFERRED_RESYNC_SECONDS if soon else RESYNC_SECONDS) - _clock()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, RESYNC_CHECK_SECONDS))
        # Woken by a change the cached fleet may not show yet: the pass reads a fresh one.
        fresh = woken.is_set()
        woken.clear()
        await resync_pass(logger, fresh=fresh)


@indexes.VMS.listen
def echo_arrived(type: str, body: Mapping[str, Any]) -> None:
    """A VM's event is in the cache: a status written before it is no longer awaited."""
    runtime().echo_pending.observed(_key(body))


#: Each Host's labels as last seen, by name: a change re-checks the selectors of the VMs on it.
_host_labels: dict[str, Mapping[str, str]] = {}


@HOSTS.listen
def recheck_on_label_change(type: str, body: Mapping[str, Any]) -> None:
    """A Host's labels changed: the VMs on it, and those already on a host their selector does not
    match (which may now have somewhere to go), are looked at by a resync pass at once, so one whose
    spec.placement.hostSelector no longer matches says so (Placed=False) and asks to move."""
    name = str((body.get("metadata") or {}).get("name", ""))
    labels = None if type == "DELETED" else dict((body.get("metadata") or {}).get("labels") or {})
    before = _host_labels.pop(name, None)
    if labels is not None:
        _host_labels[name] = labels
    if before is None or labels is None or before == labels:
        return
    recheck = label_rechecks(values(indexes.vm_index), name, {h.name: h.labels for h in values(indexes.host_index)})
    if recheck:
        runtime().deferred.update(recheck)
        runtime().resync_wake.set()


#: How long a resync pass compares VMs with the agents before it lets the event loop run.
RESYNC_STEP_SECONDS = 0.01


async def forget_strays(logger: logging.Logger) -> None:
    """Drop the agent links of Hosts that are gone and that no supervisor owns.

    A Host's supervisor drops its link when the Host goes; a link made without one (the start's first polls
    of a Host being deleted just then) stayed. Its agent answers nothing, ever, and every live look for a
    lost guest counted it as a silent agent that may run the guest: the guest was never placed again."""
    rt = runtime()
    known = set(indexes.host_names()) | set(rt.host_wakers)
    for name in rt.agents.strays(known):
        logger.info("forgetting the agent link of Host %s: the Host is gone", name)
        await rt.agents.forget(name)


async def resync_pass(logger: logging.Logger, *, fresh: bool = False) -> None:
    """One comparison of the fleet with the agents; one VM's failure does not stop the others.
    ``fresh``: rebuild the fleet first (the reconciles of the pass then read it too)."""
    rt = runtime()
    await forget_strays(logger)
    entries = values(indexes.vm_index)
    # A VM whose first event the work queue has not handled yet is left to it: after a start,
    # thousands of them would each cost a read, a placement plan and a second reconcile here. So is
    # one whose event waits or is being handled now (a pass during adoption found every VM in the
    # middle of its reconcile, before its status was written, and read each again).
    queue = rt.vm_events
    # Nor is one whose status was just written: until its echo is in, the cache shows it as before
    # (at 10,000 VMs a pass during adoption read every VM whose echo the API server had not sent yet).
    echoing = {key for key, _ in rt.echo_pending.items()}
    looked_at = [e for e in entries if e.key in rt.handled and e.key not in echoing
                 and not (queue and queue.holds(e.uid))]
    fleet_now = fleet(fresh=fresh)
    candidates: list[VMEntry] = []
    # A step of the event loop at a time, letting it run between them: the whole fleet at once held
    # it for 0.15-0.5 s at 3,000 VMs (a VM on no host costs a placement plan over every host), and
    # every handler, watch and timer waited. Each candidate is read fresh before anything is done.
    step_ends = time.monotonic() + RESYNC_STEP_SECONDS
    for entry in looked_at:
        candidates += resync_candidates((entry,), rt.agents, rt.gate.holder, fleet_now, rt.deferred)
        if time.monotonic() >= step_ends:
            await asyncio.sleep(0)
            step_ends = time.monotonic() + RESYNC_STEP_SECONDS
    if candidates:
        logger.info("resync: %d of %d VMs need a look (%s%s)", len(candidates), len(entries),
                    ", ".join(e.key for e in candidates[:5]), ", ..." if len(candidates) > 5 else "")
    slots = asyncio.Semaphore(RESYNC_IN_FLIGHT)

    async def look(entry: VMEntry) -> None:
        async with slots:
            try:
                body = await kubeapi.get("virtualmachines", entry.namespace, entry.name)
                if body is not None:
                    await _reconcile_logged(body, logger)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an API error, a bug: this VM waits for the next pass
                runtime().deferred.add(entry.key)
                metrics.RECONCILE_ERRORS.labels(kind="VirtualMachine").inc()
                logger.warning("resync of %s failed (%r); it is looked at again next pass", entry.key, exc)

    # Several at once (each waits on its read and its agent): thousands deferred while the agents
    # first answered after a start were one at a time minutes of work.
    await asyncio.gather(*(look(entry) for entry in candidates))
    await resolve_duplicates(entries, logger)
    await collect_orphans(entries, logger)


async def release(body: Mapping[str, Any], logger: kopf.Logger | logging.Logger) -> None:
    """A VirtualMachine is gone: cancel its migrations in flight and delete its guest wherever an agent holds it.

    No finalizer holds the deletion (one write per VM fewer at adoption): this runs on the DELETED
    event, once and best effort. Whatever it cannot do now (an agent that does not answer, a guest
    still leaving by migration, an operator that was down when the VM went) the resync's orphan
    collection does later, since an agent's guest whose VM the API no longer has is an orphan.
    """
    rt = runtime()
    meta = body.get("metadata") or {}
    key, uid = _key(body), str(meta.get("uid") or "")
    for m in indexes.migrations_by_vm.get(key) or []:
        if m.in_flight:
            await kubeapi.delete("virtualmachinemigrations", m.namespace, m.name)
    holder = rt.gate.holder(key)
    if holder is not None:
        logger.info(f"{key} was deleted during migration {holder}: its guest is deleted as an orphan once "
                    f"the migration has ended")
        rt.resync_wake.set()
        rt.vm_locks.pop(key, None)
        return
    async with _lock(key):  # a start in progress ends first, and the host it chose is known
        hinted = rt.placements.get(key)
        hosts = {h for h, _ in rt.agents.locate(uid)} | {(body.get("status") or {}).get("host") or "",
                                                         hinted[0] if hinted else ""}
    rt.placements.observed(key)
    rt.vm_locks.pop(key, None)
    for name in sorted(hosts - {""}):
        link = rt.agents.get(name)
        if link is None:
            continue
        try:
            await link.client.delete_vm(uid, force=True)
            logger.info(f"deleted the guest of {key} on {name}")
        except AgentError as exc:
            if exc.status != 404:
                logger.warning(f"deleting the guest of {key} on {name} failed ({exc}); the resync deletes it "
                               f"as an orphan once the agent answers")
