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
import hashlib
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

import kopf
from pydantic import ValidationError

from vmshift import limits, metrics, timestamps
from vmshift.api import conditions as cond
from vmshift.api.labels import DRIVERS_ANNOTATION, VM_LABEL
from vmshift.api.virtualmachine import VirtualMachineSpec
from vmshift.controllers import indexes, kubeapi
from vmshift.controllers.agents import RESIDENT, AgentDirectory
from vmshift.controllers.indexes import GROUP, VERSION, fleet, values
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import VMEntry, index_vm, operator_labels, vm_view
from vmshift.hypervisor.client import AgentError, AgentUnreachableError
from vmshift.hypervisor.protocol import DiskSpec, VmDefinition, VmInfo, VmState, WorkloadSpec
from vmshift.scheduling.fleet import Fleet, VMView
from vmshift.scheduling.placement import Migratability, Refusal, migratable, plan_placement, targets_available

#: Annotation an import (or a person) sets to give a new guest its initial driver inventory.
_locks: dict[str, asyncio.Lock] = {}


def _lock(key: str) -> asyncio.Lock:
    return _locks.setdefault(key, asyncio.Lock())


class DefinitionError(ValueError):
    """The VM cannot be defined on an agent as it stands; the message names what is wrong."""


def definition(entry: VMEntry, annotations: Mapping[str, str]) -> VmDefinition:
    """What the agent needs to define the guest (pure); :class:`DefinitionError` when the VM's spec or
    its ``vmshift.io/initial-drivers`` annotation is outside the limits the agents accept
    (vmshift.limits: the CRD admits no more than that, but an annotation has no schema, and an object
    stored before a limit was lowered keeps its old values)."""
    spec = entry.spec
    workload = spec.get("workload") or {}
    try:
        drivers = limits.parse_driver_list(annotations.get(DRIVERS_ANNOTATION) or "",
                                           where=f"annotation {DRIVERS_ANNOTATION}")
    except limits.DriverListError as exc:
        raise DefinitionError(str(exc)) from None
    try:
        VirtualMachineSpec.model_validate(spec)
    except ValidationError as exc:
        raise DefinitionError(_problems("spec", exc)) from None
    try:
        return _definition(entry, spec, workload, drivers)
    except ValidationError as exc:
        raise DefinitionError(_problems("the agent's VM definition", exc)) from None


def _problems(where: str, exc: ValidationError) -> str:
    return "; ".join(f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])


def _definition(entry: VMEntry, spec: Mapping[str, Any], workload: Mapping[str, Any],
                drivers: list[str]) -> VmDefinition:
    return VmDefinition(
        name=entry.name,
        namespace=entry.namespace,
        cpus=int(spec["cpus"]),
        memory_mib=int(spec["memoryMiB"]),
        compatibility=bool((spec.get("processor") or {}).get("compatibility", False)),
        disks=[
            DiskSpec(name=d["name"], size_gib=float(d.get("sizeGiB", 1)), volume=d.get("volume"),
                     passthrough_lun=d.get("passthroughLun"), local=bool(d.get("local")))
            for d in spec.get("disks") or ()
        ],
        workload=WorkloadSpec(
            dirty_rate_mib_ps=float(workload.get("dirtyRateMiBps", 0)),
            working_set_mib=float(workload.get("workingSetMiB") or 0),
        ),
        drivers=drivers or ["vmbus", "netvsc", "storvsc"],
    )


def running_status(
    vm: VMView,
    info: VmInfo,
    host: str,
    fleet_now: Fleet,
    generation: int,
    previous: Mapping[str, Any],
    *,
    wants_running: bool = True,
) -> dict[str, Any]:
    """Status of a VM whose guest the agent on ``host`` holds (pure)."""
    conditions = list(previous.get("conditions") or [])
    phase = {VmState.Running: "Running", VmState.Paused: "Running", VmState.Saved: "Stopped",
             VmState.Stopped: "Stopped", VmState.Defined: "Starting"}.get(info.state, "Pending")
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "host": host,
        "drivers": info.drivers,
        "ioCeilings": {"networkMbps": info.io_ceilings.network_mbps, "diskMBps": info.io_ceilings.disk_mbps},
        "reason": None,
        "message": None,
    }
    host_view = fleet_now.host(host)
    if info.features:
        status["processor"] = {
            "model": host_view.cpu_model if host_view else (previous.get("processor") or {}).get("model"),
            "vendor": host_view.vendor if host_view else (previous.get("processor") or {}).get("vendor"),
            "features": sorted(info.features),
            "compatibility": info.compatibility,
        }
        if previous.get("processor") and previous["processor"].get("features") == sorted(info.features):
            status["processor"]["model"] = previous["processor"].get("model", status["processor"]["model"])
            status["processor"]["vendor"] = previous["processor"].get("vendor", status["processor"]["vendor"])
    if phase == "Running":
        conditions = cond.ready(conditions, True, "Running", f"{vm.name} runs on {host}.",
                                observed_generation=generation)
    else:
        wanted = "stopped" if phase == "Stopped" else "starting"
        conditions = cond.ready(conditions, phase == "Stopped" and not wants_running,
                                phase, f"{vm.name} is {wanted} on {host}.", observed_generation=generation)
    placed, reason, message = placement_check(vm, host, fleet_now)
    conditions = cond.set_condition(conditions, "Placed", placed, reason, message, observed_generation=generation)
    m = _migratable(vm, fleet_now)
    conditions = cond.set_condition(conditions, "Migratable", m.migratable, m.reason, m.message,
                                    observed_generation=generation)
    if placed:
        conditions = cond.reconciling(conditions, False, "Reconciled", f"{vm.name} is where its spec asks.",
                                      observed_generation=generation)
        conditions = cond.stalled(conditions, False, "Reconciled", f"{vm.name} is where its spec asks.",
                                  observed_generation=generation)
    status["conditions"] = cond.dump(conditions)
    return status


#: Migratable answers by VM shape: VMs alike (processor, size, disks, constraints) get the same
#: answer, and a fleet changes slowly, so 10,000 VMs do not cost 10,000 scans of every host. The
#: shape's answer is computed as if the VM ran on no host of the fleet (SOMEWHERE), then the VM's own
#: host is taken out: no check of a target depends on which other host the VM leaves. When that
#: leaves no host, the exact answer (with its reason) is computed and cached per shape and host.
_MIGRATABLE_TTL = 30.0
SOMEWHERE = "\x00somewhere"
_migratable_cache: dict[tuple[Any, ...], tuple[float, Migratability]] = {}


def _migratable(vm: VMView, fleet_now: Fleet) -> Migratability:
    if vm.host is None or vm.anti_affinity_group:
        return migratable(vm, fleet_now)
    shape = (vm.guest_vendor, vm.guest_cpu_model, vm.guest_features, vm.compatibility, vm.cpus, vm.memory_mib, vm.disks,
             tuple(sorted(vm.host_selector.items())), vm.migration_target)
    anywhere = _cached(shape, lambda: migratable(replace(vm, name="{vm}", host=SOMEWHERE), fleet_now))
    hosts = [h for h in anywhere.hosts if h != vm.host]
    if hosts:
        return targets_available(vm.name, hosts)
    exact = _cached((*shape, vm.host), lambda: migratable(replace(vm, name="{vm}"), fleet_now))
    return replace(exact, message=exact.message.replace("{vm}", vm.name))


def _cached(key: tuple[Any, ...], compute: Callable[[], Migratability]) -> Migratability:
    now = time.monotonic()
    hit = _migratable_cache.get(key)
    if hit is not None and now - hit[0] < _MIGRATABLE_TTL:
        return hit[1]
    answer = compute()
    if len(_migratable_cache) > 50_000:
        _migratable_cache.clear()
    _migratable_cache[key] = (now, answer)
    return answer


def placement_check(vm: VMView, host: str, fleet_now: Fleet) -> tuple[bool, str, str]:
    """Does ``host`` satisfy ``vm``'s spec.placement? (pure)"""
    if vm.desired_host and vm.desired_host != host:
        return False, "HostMismatch", f"{vm.name} runs on {host} but spec.placement.host asks for {vm.desired_host}."
    view = fleet_now.host(host)
    if view is not None and vm.host_selector:
        missing = {k: v for k, v in vm.host_selector.items() if view.labels.get(k) != v}
        if missing:
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
            return False, "SelectorMismatch", f"{host} lacks the labels {wanted} that spec.placement.hostSelector asks."
    if vm.anti_affinity_group:
        others = fleet_now.group_members_on(vm.anti_affinity_group, host) - {vm.key}
        if others:
            return False, "AntiAffinity", (f"{host} also runs {', '.join(sorted(others))} of anti-affinity group "
                                           f"{vm.anti_affinity_group}.")
    return True, "Placed", f"{host} satisfies spec.placement of {vm.name}."


def migration_name(vm: str, target: str | None, generation: int) -> str:
    """A stable name for the migration a VM asks for at one generation of its spec."""
    base = f"{vm}-to-{target or 'any'}"
    digest = hashlib.sha256(f"{vm}/{target}/{generation}".encode()).hexdigest()[:6]
    return f"{base[:240]}-{digest}"


class _UnknownLocation(Exception):
    """The agent that would know where the guest lives does not answer now."""


async def _locate(entry: VMEntry, ever: bool = False) -> tuple[str, VmInfo] | None:
    """Where the guest lives: (host, info), or None when nowhere; _UnknownLocation when it cannot be known now.

    ``ever``: the VM had a host once. Then "nowhere" needs a live look at every agent (the reports
    may be a poll old), and any agent that does not answer makes the location unknown.
    """
    rt = runtime()
    # A placement this process just made may not be in the (older) body yet: follow it too.
    hinted = rt.overlay.placed.get(entry.key)
    host = entry.host or (hinted[0] if hinted else None)
    if host:
        link = rt.agents.get(host)
        if link is None or link.info is None:
            raise _UnknownLocation(host)
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
    if host and not rt.agents.all_reachable():
        raise _UnknownLocation(host)
    if host or ever:
        live = await rt.agents.live_locate(entry.uid)
        if live is None:
            raise _UnknownLocation(host or "an agent")
        if live:
            return live[0]
    return None


async def _patch(entry: VMEntry, status: dict[str, Any], previous: Mapping[str, Any]) -> bool:
    """Write ``status`` unless it changes nothing; True when written."""
    if cond.changes_nothing(status, previous):
        return False
    await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, status)
    return True


#: Each VM as it was when a reconcile last found nothing to change, so the echoes of our own writes
#: (the status patch, Kopf's finalizer) cost a comparison instead of a reconcile.
_settled: dict[str, tuple[Any, ...]] = {}


#: VMs whose last reconcile could not finish for want of an agent's answer: the resync retries them.
_deferred: set[str] = set()


def _key(body: Mapping[str, Any]) -> str:
    return f"{body['metadata'].get('namespace')}/{body['metadata'].get('name')}"


def fingerprint(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a reconcile reads from a VM's body, timestamps aside (pure)."""
    meta = body.get("metadata") or {}
    return (meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp"),
            json.dumps([meta.get("labels"), meta.get("annotations"), cond.without_timestamps(body.get("status") or {})],
                       sort_keys=True, default=str))


def settled(body: Mapping[str, Any], agents: AgentDirectory) -> bool:
    """Did a reconcile already find this very body in order, and do the agents still agree?"""
    return _settled.get(_key(body)) == fingerprint(body) and not needs_resync(index_vm(body), agents)


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
        if not await rt.agents.wait_synced(indexes.host_names):
            # An agent not heard from yet may hold this guest (adoption after a restart), and a
            # Migratable condition computed before every agent answered would undercount hosts.
            _deferred.add(entry.key)
            return
        try:
            located = await _locate(entry, ever_placed(previous))
        except _UnknownLocation:
            _deferred.add(entry.key)  # the agent that should know is not reachable now: the resync comes back
            return
        view = vm_view(entry)
        if located is None:
            if not entry.spec.get("running", True):
                status = {"observedGeneration": generation, "phase": "Stopped", "host": None,
                          "conditions": cond.dump(cond.ready(previous.get("conditions") or [], True, "Stopped",
                                                             f"{entry.name} is stopped as spec.running asks.",
                                                             observed_generation=generation))}
                await _patch(entry, status, previous)
                return
            if not previous.get("conditions"):
                # kstatus must not read the VM as healthy while it is being placed.
                first = {"observedGeneration": generation, "phase": "Pending", "conditions": cond.dump(
                    cond.first_look([], f"Placing {entry.name}.", observed_generation=generation))}
                await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, first)
                previous = first
            await _place(entry, body, view, previous, logger)
            return
        host, info = located
        if not entry.spec.get("running", True) and info.state == VmState.Running:
            info = await rt.agents.get(host).client.stop_vm(entry.uid)  # type: ignore[union-attr]
        elif entry.spec.get("running", True) and info.state in (VmState.Defined, VmState.Stopped):
            info = await rt.agents.get(host).client.start_vm(entry.uid)  # type: ignore[union-attr]
        if entry.host == host:
            rt.overlay.forget(entry.key)  # the index shows the placement now
        now_fleet = fleet()
        view = vm_view(entry, host=host)
        if info.features:  # the agent is the truth about what the guest was started with
            where = now_fleet.host(host)
            view = replace(view, guest_features=frozenset(info.features),
                           guest_vendor=where.vendor if where else view.guest_vendor,
                           guest_cpu_model=where.cpu_model if where else view.guest_cpu_model)
        status = running_status(view, info, host, now_fleet, generation, previous,
                                wants_running=bool(entry.spec.get("running", True)))
        if not await _patch(entry, status, previous):
            _settled[entry.key] = fingerprint(body)
            metrics.VMS_IN_SYNC.set(len(_settled))
        await _ask_for_migration(entry, view, host, status)


def start_outcome_unknown(exc: AgentError) -> bool:
    """Whether a failed define/start may still have started the guest (pure): no answer, or the agent
    failed inside. A refusal (4xx) changed nothing."""
    return isinstance(exc, AgentUnreachableError) or exc.status == 0 or exc.status >= 500


def ever_placed(status: Mapping[str, Any]) -> bool:
    """Whether a VM ever had a host (pure): then a guest of it may run somewhere the cache does not show."""
    return bool(status.get("host") or status.get("startedAt") or status.get("lastMigration"))


async def _place(entry: VMEntry, body: Mapping[str, Any], view: VMView, previous: Mapping[str, Any],
                 logger: kopf.Logger) -> None:
    rt = runtime()
    generation = entry.generation
    try:
        wanted = definition(entry, body.get("metadata", {}).get("annotations") or {})
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
            status = {"observedGeneration": generation, "phase": "Pending", "host": None,
                      "reason": decision.reason.value, "message": decision.message,
                      "conditions": cond.dump(conditions)}
            if not cond.changes_nothing(status, previous):
                kopf.warn(body, reason="FailedScheduling", message=decision.message)
                metrics.MIGRATION_REFUSALS.labels(reason=decision.reason.value).inc()
            await _patch(entry, status, previous)
            return
        host = decision.host
        rt.overlay.place(entry.key, host, view.cpus, view.memory_mib)
    conditions = cond.reconciling(previous.get("conditions") or [], True, "Starting",
                                  f"Starting {entry.name} on {host}.", observed_generation=generation)
    # The host goes into status before the guest starts: a crash in between leaves a trail.
    await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {
        "observedGeneration": generation, "phase": "Starting", "host": host, "reason": None, "message": None,
        "conditions": cond.dump(conditions)})
    link = rt.agents.get(host)
    if link is None:
        raise kopf.TemporaryError(f"no agent link for {host} yet", delay=2)
    try:
        await link.client.define_vm(entry.uid, wanted)
        info = await link.client.start_vm(entry.uid)
    except AgentError as exc:
        if start_outcome_unknown(exc):
            # The agent may have started the guest before the answer was lost: keep the host in status
            # so the next pass asks that agent, and place nowhere else until it has answered.
            _deferred.add(entry.key)
            message = (f"Starting {entry.name} on {host}: no answer from its agent ({exc}). The guest may be "
                       f"running there; the operator asks again before it chooses another host.")
            kopf.warn(body, reason="StartUnconfirmed", message=message)
            await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {
                "reason": "StartUnconfirmed", "message": message})
            return
        with contextlib.suppress(AgentError):  # a definite refusal: undo a definition it may have kept
            await link.client.delete_vm(entry.uid)
        rt.overlay.forget(entry.key)
        message = f"Starting {entry.name} on {host} failed: {exc}. The operator will choose again."
        kopf.warn(body, reason="FailedStart", message=message)
        await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {
            "phase": "Pending", "host": None, "reason": "FailedStart", "message": message})
        return
    kopf.info(body, reason="Started", message=f"Started {entry.name} on {host} (score {decision.score:.1f}).")
    logger.info(f"started {entry.key} on {host}")
    started = {"startedAt": timestamps.rfc3339(micro=True)}
    chosen = now_fleet.host(host)
    status = running_status(view.started_on(chosen) if chosen else view, info, host,
                            now_fleet, generation, {**previous, "conditions": cond.dump(conditions)})
    await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {**status, **started})


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
    status = {"observedGeneration": generation, "phase": "Pending", "host": None,
              "reason": "InvalidDefinition", "message": message, "conditions": cond.dump(conditions)}
    if not cond.changes_nothing(status, previous):
        kopf.warn(body, reason="InvalidDefinition", message=message)
    await _patch(entry, status, previous)


async def _ask_for_migration(entry: VMEntry, view: VMView, host: str, status: Mapping[str, Any]) -> None:
    """Create the migration the spec implies, once per spec generation: to spec.placement.host when
    it names another host, or to a host the scheduler picks when the current one no longer matches
    spec.placement.hostSelector."""
    desired = view.desired_host
    placed: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Placed"), {})
    if desired and desired != host:
        why = f"spec.placement.host changed to {desired}"
    elif not desired and placed.get("reason") == "SelectorMismatch":
        why = f"{host} no longer matches spec.placement.hostSelector"
    else:
        return
    name = migration_name(entry.name, desired, entry.generation)
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
        "spec": {"vmName": entry.name, "mode": (entry.spec.get("migration") or {}).get("mode", "Auto"),
                 "reason": why, **({"targetHost": desired} if desired else {})},
    }
    max_downtime = (entry.spec.get("migration") or {}).get("maxDowntimeMs")
    if max_downtime:
        body["spec"] = {**body["spec"], "maxDowntimeMs": max_downtime}
    await kubeapi.create("virtualmachinemigrations", entry.namespace, body)


@kopf.on.event(GROUP, VERSION, "virtualmachines")
async def vm_event(type: str | None, body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    if type == "DELETED":
        _settled.pop(_key(body), None)
        _deferred.discard(_key(body))
        metrics.VMS_IN_SYNC.set(len(_settled))
        return
    await indexes.ready()
    if settled(body, runtime().agents):
        return
    await _reconcile_logged(body, logger)


async def _reconcile_logged(body: Mapping[str, Any], logger: kopf.Logger | logging.Logger) -> None:
    _settled.pop(_key(body), None)
    _deferred.discard(_key(body))
    try:
        await reconcile(body, logger)
    except AgentError as exc:
        _deferred.add(_key(body))
        metrics.RECONCILE_ERRORS.labels(kind="VirtualMachine").inc()
        logger.warning(f"reconcile of {body['metadata']['name']} deferred: {exc}")


def needs_resync(entry: VMEntry, agents: AgentDirectory) -> bool:
    """Does the agents' last report contradict the VM's status? (pure but for the report it reads)

    False when they agree (the guest runs, or is stopped, where status says, as spec asks) and
    when the host's agent is not reachable: nothing can be learnt or done until it is back.
    """
    link = agents.get(entry.host or "")
    if link is None or not link.reachable:
        return False
    guest = link.vms.get(entry.uid)
    wanted = VmState.Running if entry.spec.get("running", True) else VmState.Stopped
    return guest is None or guest.state != wanted or entry.phase not in ("Running", "Stopped")


#: How often the whole fleet is compared with the agents' reports.
RESYNC_SECONDS = 30.0


def resync_candidates(entries: Iterable[VMEntry], agents: AgentDirectory, gate_holder: Callable[[str], str | None],
                      fleet_now: Fleet, deferred: Collection[str]) -> list[VMEntry]:
    """The VMs a resync pass must reconcile (pure but for the reports it reads).

    A VM whose last reconcile was deferred (an agent did not answer); a placed VM when the agents
    contradict its status; a VM on no host when the scheduler would now find it a host (one that was
    refused stays quiet until then). A VM whose migration is in flight belongs to the migration; one
    never handled yet belongs to its first event.
    """
    out = []
    for entry in entries:
        if gate_holder(entry.key):
            continue
        if entry.key in deferred:
            out.append(entry)
        elif entry.host is not None:
            if needs_resync(entry, agents):
                out.append(entry)
        elif not entry.spec.get("running", True) and entry.phase == "Stopped":
            continue
        elif entry.phase == "Pending" and not isinstance(plan_placement(vm_view(entry), fleet_now), Refusal):
            out.append(entry)
    return out


def running_copies(reports: Mapping[str, Mapping[str, VmInfo]]) -> dict[str, list[str]]:
    """VM ids that more than one agent reports Running, with the hosts (pure)."""
    where: dict[str, list[str]] = {}
    for host, guests in reports.items():
        for vm_id, info in guests.items():
            if info.state is VmState.Running:
                where.setdefault(vm_id, []).append(host)
    return {vm_id: sorted(hosts) for vm_id, hosts in where.items() if len(hosts) > 1}


def choose_copy(hosts: Collection[str], completed_target: str | None, status_host: str | None) -> str | None:
    """Which of a VM's running copies to keep (pure): the one on the target that completed the VM's
    last migration, else the one its status names; None when nothing says (a person decides)."""
    for choice in (completed_target, status_host):
        if choice is not None and choice in hosts:
            return choice
    return None


def orphan_guests(reports: Mapping[str, Mapping[str, VmInfo]], known: Collection[str]) -> list[tuple[str, VmInfo]]:
    """Guests the agents hold whose VirtualMachine the API no longer has, by the cache (pure).

    Only settled guests count: one that is arriving or leaving by migration belongs to it. The
    caller confirms each with a live read before it acts (the cache may lag a VM just created).
    """
    return [(host, info) for host, guests in sorted(reports.items()) for vm_id, info in sorted(guests.items())
            if vm_id not in known and info.state in RESIDENT and info.migration_id is None]


async def _resolve_duplicates(entries: Iterable[VMEntry], logger: logging.Logger) -> None:
    """Two agents run the same guest (a switchover settled wrongly, a host back from a partition): keep the
    copy the VM's last migration completed on (or the one status names) and stop the others."""
    rt = runtime()
    by_uid = {e.uid: e for e in entries}
    for vm_id, hosts in running_copies(rt.agents.reports()).items():
        entry = by_uid.get(vm_id)
        if entry is None or rt.gate.holder(entry.key) is not None:
            continue  # an orphan (collected below) or a migration in flight (its switchover window)
        mine = indexes.migrations_by_vm.get(entry.key) or []
        if any(m.in_flight for m in mine):
            continue
        completed: str | None = None
        for m in sorted(mine, key=lambda m: (m.created, m.name), reverse=True):
            link = rt.agents.get(m.target or "")
            if m.target in hosts and link is not None:
                try:
                    if (await link.client.get_migration(m.uid)).committed:
                        completed = m.target
                        break
                except AgentError:
                    continue
        keep = choose_copy(hosts, completed, entry.host)
        if keep is None:
            logger.error("resync: %s runs on %s and nothing says which copy is right; a person must stop one",
                         entry.key, ", ".join(hosts))
            continue
        keeper = rt.agents.get(keep)
        try:
            if keeper is None or (await keeper.client.get_vm(vm_id)).state is not VmState.Running:
                continue  # the reports are a poll old: look again next pass
        except AgentError:
            continue
        for host in hosts:
            if host == keep:
                continue
            link = rt.agents.get(host)
            if link is None:
                continue
            try:
                info = await link.client.get_vm(vm_id)
                if info.state is not VmState.Running or info.migration_id is not None:
                    continue
                await link.client.delete_vm(vm_id, force=True)
            except AgentError as exc:
                logger.warning("resync: stopping the second copy of %s on %s failed: %s", entry.key, host, exc)
                continue
            why = "it completed the last migration" if keep == completed else "status names it"
            message = (f"{entry.name} ran on both {keep} and {host}; the copy on {host} was stopped and deleted and "
                       f"the one on {keep} kept ({why}).")
            logger.warning("resync: %s", message)
            kopf.warn(_ref(entry), reason="DuplicateStopped", message=message)
        if entry.host != keep:
            await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {"host": keep})


async def _collect_orphans(entries: Iterable[VMEntry], logger: logging.Logger) -> None:
    """Stop and delete guests whose VirtualMachine was deleted while their agent could not be reached."""
    rt = runtime()
    known = {e.uid for e in entries}
    for host, info in orphan_guests(rt.agents.reports(), known):
        body = await kubeapi.get("virtualmachines", info.namespace, info.name)
        if body is not None and body.get("metadata", {}).get("uid") == info.id:
            continue  # the cache lags: the VM exists
        link = rt.agents.get(host)
        if link is None:
            continue
        try:
            await link.client.delete_vm(info.id, force=True)
        except AgentError as exc:
            if exc.status != 404:
                logger.warning("resync: deleting orphan guest %s on %s failed: %s", info.id, host, exc)
            continue
        logger.warning("resync: deleted guest %s (%s/%s) on %s: its VirtualMachine no longer exists", info.id,
                       info.namespace, info.name, host)


def _ref(entry: VMEntry) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
            "metadata": {"name": entry.name, "namespace": entry.namespace, "uid": entry.uid}}


async def resync_forever(logger: logging.Logger) -> None:
    """Catch what no event announces: a guest lost with its host, an agent back after an outage,
    room freed for a VM that was refused.

    One loop for the fleet instead of a timer per VM: a pass compares every cached VM with the
    agents' last reports and the scheduler's view (no API calls) and reconciles only the VMs
    :func:`resync_candidates` picks, each read fresh from the API server. It runs under the
    operator's supervisor (startup.py), which restarts it if anything escapes a pass.
    """
    await indexes.ready()
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        await resync_pass(logger)


async def resync_pass(logger: logging.Logger) -> None:
    """One comparison of the fleet with the agents; one VM's failure does not stop the others."""
    rt = runtime()
    entries = values(indexes.vm_index)
    candidates = resync_candidates(entries, rt.agents, rt.gate.holder, fleet(), _deferred)
    if candidates:
        logger.info("resync: %d of %d VMs need a look (%s%s)", len(candidates), len(entries),
                    ", ".join(e.key for e in candidates[:5]), ", ..." if len(candidates) > 5 else "")
    for entry in candidates:
        try:
            body = await kubeapi.get("virtualmachines", entry.namespace, entry.name)
            if body is not None:
                await _reconcile_logged(body, logger)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an API error, a bug: this VM waits for the next pass
            _deferred.add(entry.key)
            metrics.RECONCILE_ERRORS.labels(kind="VirtualMachine").inc()
            logger.warning("resync of %s failed (%r); it is looked at again next pass", entry.key, exc)
    await _resolve_duplicates(entries, logger)
    await _collect_orphans(entries, logger)


@kopf.on.delete(GROUP, VERSION, "virtualmachines")
async def vm_deleted(body: kopf.Body, meta: kopf.Meta, logger: kopf.Logger, **_: Any) -> None:
    """Stop and delete the guest wherever an agent holds it; cancel a migration in flight first."""
    await indexes.ready()
    rt = runtime()
    key = f"{meta['namespace']}/{meta['name']}"
    uid = meta["uid"]
    for m in indexes.migrations_by_vm.get(key) or []:
        if m.in_flight:
            await kubeapi.delete("virtualmachinemigrations", m.namespace, m.name)
    holder = rt.gate.holder(key)
    if holder is not None:
        raise kopf.TemporaryError(f"waiting for migration {holder} of {key} to end", delay=1)
    failures = []
    for name in sorted({h for h, _ in rt.agents.locate(uid)} | {(body.get("status") or {}).get("host") or ""} - {""}):
        link = rt.agents.get(name)
        if link is None:
            continue
        try:
            await link.client.delete_vm(uid, force=True)
        except AgentUnreachableError as exc:
            # A host that is gone takes its guest with it; do not hold the VM's deletion hostage.
            logger.warning(f"agent of {name} unreachable while deleting {key}: {exc}")
        except AgentError as exc:
            if exc.status != 404:
                failures.append(f"{name}: {exc}")
    if failures:
        raise kopf.TemporaryError(f"could not delete the guest of {key}: {'; '.join(failures)}", delay=2)
    rt.overlay.forget(key)
    _locks.pop(key, None)

