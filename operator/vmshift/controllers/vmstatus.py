"""What the VM controller decides and writes, as plain functions: no I/O.

The agent's definition of a guest, the VM's status from what an agent reports (Placed, Migratable,
Ready), the status of a refused or failed start, and the resync's choices (which VMs to look at
again, which copy of a guest running twice to keep, which guests are orphans). ``virtualmachines``
gathers the inputs and applies these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

import orjson
from pydantic import ValidationError

from vmshift import limits
from vmshift.api import conditions as cond
from vmshift.api.common import ConditionType
from vmshift.api.virtualmachine import VirtualMachinePhase as Phase
from vmshift.controllers.agents import RESIDENT, AgentDirectory
from vmshift.controllers.views import VMEntry, problems, vm_view
from vmshift.hypervisor.client import AgentError, AgentUnreachableError
from vmshift.hypervisor.protocol import DiskSpec, VmDefinition, VmInfo, VmState, WorkloadSpec
from vmshift.scheduling.baseline import baseline_condition, baseline_in
from vmshift.scheduling.compatibility import Suggestions, blocking, check_target
from vmshift.scheduling.fleet import Fleet, HostView, VMView
from vmshift.scheduling.placement import Migratability, Refusal, migratable, plan_placement, targets_available

#: Annotation an import (or a person) sets to give a new guest its initial driver inventory.
DRIVERS_ANNOTATION = "vmshift.io/initial-drivers"


class DefinitionError(ValueError):
    """The VM cannot be defined on an agent as it stands; the message names what is wrong."""


def definition(entry: VMEntry, annotations: Mapping[str, str] | None = None) -> VmDefinition:
    """What the agent needs to define the guest (pure); :class:`DefinitionError` when the VM's spec or
    its ``vmshift.io/initial-drivers`` annotation is outside the limits the agents accept
    (vmshift.limits: the CRD admits no more than that, but an annotation has no schema, and an object
    stored before a limit was lowered keeps its old values)."""
    if entry.problem is not None:
        raise DefinitionError(entry.problem)
    notes = entry.annotations if annotations is None else annotations
    try:
        drivers = limits.parse_driver_list(notes.get(DRIVERS_ANNOTATION) or "",
                                           where=f"annotation {DRIVERS_ANNOTATION}")
    except limits.DriverListError as exc:
        raise DefinitionError(str(exc)) from None
    spec = entry.spec
    try:
        return VmDefinition(
            name=entry.name,
            namespace=entry.namespace,
            cpus=spec.cpus,
            memory_mib=spec.memoryMiB,
            compatibility=spec.processor.compatibility,
            disks=[DiskSpec(name=d.name, size_gib=float(d.sizeGiB), volume=d.volume,
                            passthrough_lun=d.passthroughLun, local=bool(d.local)) for d in spec.disks],
            workload=WorkloadSpec(dirty_rate_mib_ps=float(spec.workload.dirtyRateMiBps),
                                  working_set_mib=float(spec.workload.workingSetMiB or 0)),
            drivers=drivers or ["vmbus", "netvsc", "storvsc"],
        )
    except ValidationError as exc:
        raise DefinitionError(problems("the agent's VM definition", exc)) from None


#: The VM's status reason once a post-copy lost its target (migrations.py writes it with the failure's
#: message): the guest runs nowhere and a person decides; a later look at the paused guest keeps both.
POSTCOPY_LOST = "PostCopyLost"


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
    # Paused outside a migration (whose daemon owns the status while it moves): a guest left paused, as
    # by a post-copy that lost its target; it does not run, and a person decides.
    phase = {VmState.Running: Phase.Running, VmState.Paused: Phase.Failed, VmState.Saved: Phase.Stopped,
             VmState.Stopped: Phase.Stopped,
             VmState.Defined: Phase.Starting if wants_running else Phase.Stopped}.get(info.state, Phase.Pending)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase.value,
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
        baseline = baseline_in(vm, fleet_now, host_view.vendor) if info.compatibility and host_view else None
        if baseline is not None and host_view is not None:
            status["processor"]["baseline"] = baseline.to_status()
            check = baseline_condition(vm.name, frozenset(info.features), baseline, host_view)
            conditions = cond.set_condition(conditions, ConditionType.ProcessorBaseline, check.current, check.reason,
                                            check.message, observed_generation=generation)
    if phase is Phase.Running:
        conditions = cond.ready(conditions, True, "Running", f"{vm.name} runs on {host}.",
                                observed_generation=generation)
    elif info.state is VmState.Paused:
        kept = previous.get("reason") == POSTCOPY_LOST and previous.get("message")
        status["reason"] = POSTCOPY_LOST if kept else "GuestPaused"
        status["message"] = previous["message"] if kept else (
            f"{vm.name}'s guest is paused on {host} and does not run; its events say why. Set spec.running: "
            f"false to stop it, then true to boot it again.")
        conditions = cond.ready(conditions, False, status["reason"], status["message"],
                                observed_generation=generation)
    else:
        wanted = "stopped" if phase is Phase.Stopped else "starting"
        conditions = cond.ready(conditions, phase is Phase.Stopped and not wants_running,
                                phase.value, f"{vm.name} is {wanted} on {host}.", observed_generation=generation)
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
    if info.state is VmState.Paused:  # a person must act: Stalled says so (after Placed's Reconciled)
        conditions = cond.stalled(conditions, True, status["reason"], status["message"],
                                  observed_generation=generation)
    status["conditions"] = cond.dump(conditions)
    return status


#: Migratable answers by VM shape: VMs alike (processor, size, disks, constraints) get the same
#: answer, and a fleet changes slowly, so 10,000 VMs do not cost 10,000 scans of every host. The
#: shape's answer is computed as if the VM ran on no host of the fleet (SOMEWHERE), then the VM's own
#: host is taken out: no check of a target depends on which other host the VM leaves. When that
#: leaves no host, the exact answer (with its reason) is computed and cached per shape and host.
SOMEWHERE = "\x00somewhere"
_migratable_cache: dict[tuple[Any, ...], Migratability] = {}
#: The fleet the cached answers were computed from: a fleet built from newer inputs (a cached object,
#: an agent's facts, a placement: see ``indexes.fleet``) is another object and empties the cache.
_migratable_fleet: list[Fleet] = []


def _migratable(vm: VMView, fleet_now: Fleet) -> Migratability:
    if vm.host is None or vm.anti_affinity_group:
        return migratable(vm, fleet_now)
    if not _migratable_fleet or _migratable_fleet[0] is not fleet_now:
        _migratable_cache.clear()
        _migratable_fleet[:] = [fleet_now]
    shape = (vm.guest_vendor, vm.guest_cpu_model, vm.guest_features, vm.compatibility, vm.cpus, vm.memory_mib, vm.disks,
             vm.host_selector, vm.migration_target)

    def on_its_host() -> Migratability:
        anywhere = _cached(shape, lambda: _anywhere(replace(vm, name="{vm}", host=SOMEWHERE), shape, fleet_now))
        hosts = [h for h in anywhere.hosts if h != vm.host]
        return targets_available("{vm}", hosts) if hosts else migratable(replace(vm, name="{vm}"), fleet_now)

    # Per shape and host: the VMs of one host share the answer (taking the host out of a list of
    # 1,000 for each VM was most of the status's cost at a restart, where the fleet does not change).
    answer = _cached((*shape, vm.host), on_its_host)
    return replace(answer, message=answer.message.replace("{vm}", vm.name))


#: Per VM shape, each host's verdict (could it take the shape's guest from SOMEWHERE?) with the
#: host's view it was made from. A new fleet (every second while VMs are adopted, since each changes
#: its host's usage) re-checks only the hosts whose view changed, not all 1,000 for every shape.
_verdicts: dict[tuple[Any, ...], dict[str, tuple[HostView, bool]]] = {}


def _anywhere(vm: VMView, shape: tuple[Any, ...], fleet_now: Fleet) -> Migratability:
    """:func:`migratable` of a shape placed SOMEWHERE (``vm``), its host list from the verdicts kept
    per host view. Without an anti-affinity group and with its source nowhere, whether a host can
    take the guest depends on the shape and that host's view alone (a busy migration slot only
    makes it wait, which does not count), so a view object seen before has its verdict."""
    known = _verdicts.get(shape)
    if known is None:
        if len(_verdicts) > 1000:
            _verdicts.clear()
        known = _verdicts[shape] = {}
    suggestions = Suggestions(vm, fleet_now)
    hosts: list[str] = []
    for name in fleet_now.host_names():
        view = fleet_now.hosts[name]
        seen = known.get(name)
        if seen is None or seen[0] is not view:
            seen = known[name] = (view, not blocking(check_target(vm, view, fleet_now, moving=True,
                                                                  suggestions=suggestions)))
        if seen[1]:
            hosts.append(name)
    if len(known) > len(fleet_now.hosts):  # hosts gone from the fleet
        for gone in set(known) - set(fleet_now.hosts):
            del known[gone]
    if hosts:
        return targets_available(vm.name, hosts)
    return migratable(vm, fleet_now)  # no host: the full answer says why


def _cached(key: tuple[Any, ...], compute: Callable[[], Migratability]) -> Migratability:
    hit = _migratable_cache.get(key)
    if hit is not None:
        return hit
    answer = compute()
    if len(_migratable_cache) > 50_000:
        _migratable_cache.clear()
    _migratable_cache[key] = answer
    return answer


def placement_check(vm: VMView, host: str, fleet_now: Fleet) -> tuple[bool, str, str]:
    """Does ``host`` satisfy ``vm``'s spec.placement? (pure)"""
    if vm.desired_host and vm.desired_host != host:
        return False, "HostMismatch", f"{vm.name} runs on {host} but spec.placement.host asks for {vm.desired_host}."
    view = fleet_now.host(host)
    if view is not None:
        missing = vm.host_selector.unmet(view.labels)
        if missing:
            wanted = ", ".join(missing)
            return False, "SelectorMismatch", f"{host} does not meet {wanted} that spec.placement.hostSelector asks."
    if vm.anti_affinity_group:
        others = fleet_now.group_members_on(vm.anti_affinity_group, host) - {vm.key}
        if others:
            return False, "AntiAffinity", (f"{host} also runs {', '.join(sorted(others))} of anti-affinity group "
                                           f"{vm.anti_affinity_group}.")
    return True, "Placed", f"{host} satisfies spec.placement of {vm.name}."


def migration_name(vm: str, target: str | None, generation: int, candidates: Iterable[str] = ()) -> str:
    """A stable name for the migration a VM asks for at one generation of its spec (pure).

    ``candidates``: for a move the hosts' labels ask for (the VM's host no longer matches its
    selector), the hosts that match it now. The VM asks once per set: when its only candidates go
    (that migration fails), a new set of matching hosts asks again.
    """
    base = f"{vm}-to-{target or 'any'}"
    context = f"/{','.join(sorted(candidates))}" if candidates else ""
    digest = hashlib.sha256(f"{vm}/{target}/{generation}{context}".encode()).hexdigest()[:6]
    return f"{base[:240]}-{digest}"


def selector_candidates(vm: VMView, fleet_now: Fleet) -> list[str]:
    """The hosts other than the VM's whose labels match its spec.placement.hostSelector (pure)."""
    return sorted(h.name for h in fleet_now if h.name != vm.host
                  and vm.host_selector.matches(h.labels))


def fingerprint(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a reconcile reads from a VM's body, timestamps aside (pure). The labels, annotations and
    status go in as a digest: one is kept per VM (10,000 statuses as text were ~20 MiB)."""
    meta = body.get("metadata") or {}
    parts = [meta.get("labels"), meta.get("annotations"), cond.without_timestamps(body.get("status") or {})]
    text = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return (meta.get("uid"), meta.get("generation"), meta.get("deletionTimestamp"),
            hashlib.blake2b(text, digest_size=16).digest())


def failed_start_status(previous: Mapping[str, Any], generation: int, message: str) -> dict[str, Any]:
    """Status of a VM whose start an agent refused (pure): Failed, on no host, Ready=False and Stalled
    with reason FailedStart. The resync places it again; a start that succeeds clears it."""
    conditions = cond.ready(previous.get("conditions") or [], False, "FailedStart", message,
                            observed_generation=generation)
    conditions = cond.reconciling(conditions, False, "FailedStart", message, observed_generation=generation)
    conditions = cond.stalled(conditions, True, "FailedStart", message, observed_generation=generation)
    return {"observedGeneration": generation, "phase": Phase.Failed.value, "host": None, "reason": "FailedStart",
            "message": message, "conditions": cond.dump(conditions)}


def start_outcome_unknown(exc: AgentError) -> bool:
    """Whether a failed define/start may still have started the guest (pure): no answer, or the agent
    failed inside. A refusal (4xx) changed nothing."""
    return isinstance(exc, AgentUnreachableError) or exc.status == 0 or exc.status >= 500


def ever_placed(status: Mapping[str, Any]) -> bool:
    """Whether a VM ever had a host (pure): then a guest of it may run somewhere the cache does not show."""
    return bool(status.get("host") or status.get("startedAt") or status.get("lastMigration"))


def report_suffices(report: VmInfo | None, reported_at: float, since: float, wants_running: bool) -> bool:
    """May the agent's last report of a guest stand in for asking the agent now? (pure)

    Only a report taken after ``since`` (the operator's start: nothing older is trusted across a
    restart) that shows the guest resident and in the state the spec asks for, so it leads to no
    action: a settled fleet is re-checked without one agent call per VM. Any other report is
    confirmed by a live call first (it may be a poll old): one that would make the operator start or
    stop the guest, and one of a moment in between (Saved or Paused while a migration ran: the
    migration may have ended since and the guest run again, and a status written from that report
    would say Stopped or Failed of a running guest).
    """
    if report is None or reported_at <= since:
        return False
    if wants_running:
        return report.state is VmState.Running
    return report.state in (VmState.Stopped, VmState.Defined)


def start_baseline(view: VMView, host: str, fleet_now: Fleet) -> frozenset[str] | None:
    """In compatibility mode, the fleet's baseline a guest starting on ``host`` gets (pure; None: not
    in compatibility mode, or ``host`` unknown)."""
    target = fleet_now.host(host)
    if not view.compatibility or target is None:
        return None
    baseline = baseline_in(view, fleet_now, target.vendor)
    return baseline.features if baseline is not None else None


def baseline_stale(entry: VMEntry, fleet_now: Fleet) -> bool:
    """Does a compatibility-mode VM's ``status.processor.baseline`` differ from the fleet's now (a host
    added, removed or relabelled)? Then its status must say so (pure)."""
    processor = entry.processor
    host = fleet_now.host(entry.host or "")
    if processor is None or not processor.compatibility or host is None:
        return False
    baseline = baseline_in(entry.view, fleet_now, host.vendor)
    stored = processor.baseline.model_dump(by_alias=True, exclude_none=True) if processor.baseline else None
    return (baseline.to_status() if baseline is not None else None) != stored


def needs_resync(entry: VMEntry, agents: AgentDirectory) -> bool:
    """Does the agents' last report contradict the VM's status? (pure but for the report it reads)

    False when they agree (the guest runs, or is stopped, where status says, as spec asks) and
    when the host's agent is not reachable: nothing can be learnt or done until it is back.
    """
    link = agents.get(entry.host or "")
    if link is None or not link.reachable:
        return False
    guest = link.vms.get(entry.uid)
    wanted = VmState.Running if entry.spec.running else VmState.Stopped
    # The guest is as the spec asks, so the phase must say so too: a status written from a report of a
    # moment in between (Saved by a quick migration later cancelled) says Stopped of a running guest.
    return guest is None or guest.state != wanted or entry.phase is not settled_phase(entry.spec.running)


def settled_phase(wants_running: bool) -> Phase:
    """The phase of a VM whose guest is in the state its spec asks for."""
    return Phase.Running if wants_running else Phase.Stopped


#: How often the whole fleet is compared with the agents' reports.
RESYNC_SECONDS = 30.0
#: How soon a VM whose reconcile had to wait (an agent did not answer) is looked at again.
DEFERRED_RESYNC_SECONDS = 5.0


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
            if needs_resync(entry, agents) or baseline_stale(entry, fleet_now):
                out.append(entry)
        elif not entry.spec.running and entry.phase is Phase.Stopped:
            continue
        elif entry.phase in (Phase.Pending, Phase.Failed) and not isinstance(
                plan_placement(vm_view(entry), fleet_now), Refusal):
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


class Orphans(NamedTuple):
    """Resident guests the agents hold whose VirtualMachine the API no longer has, by the cache, each with
    its host. A guest still arriving by migration is in neither list: it belongs to the migration."""

    #: Guests in no migration: the orphans to delete. The caller confirms each with a live read before it
    #: acts (the cache may lag a VM just created).
    settled: list[tuple[str, VmInfo]]
    #: Guests still in a migration (a source's copy leaving): orphans once it ends, which the agents' next
    #: reports show.
    moving: list[tuple[str, VmInfo]]


def orphan_guests(reports: Mapping[str, Mapping[str, VmInfo]], known: Collection[str]) -> Orphans:
    """The agents' resident guests whose VM uid is not ``known``, settled or in a migration (pure)."""
    orphans = Orphans(settled=[], moving=[])
    for host, guests in sorted(reports.items()):
        for vm_id, info in sorted(guests.items()):
            if vm_id not in known and info.state in RESIDENT:
                (orphans.settled if info.migration_id is None else orphans.moving).append((host, info))
    return orphans


def label_rechecks(entries: Iterable[VMEntry], changed: str, labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The VMs to look at again when Host ``changed``'s labels changed (pure): those on it, and those
    with a host selector their own host does not match (a relabelled host may be where they go)."""
    out = []
    for e in entries:
        if e.host is None:
            continue
        selector = e.spec.placement.hostSelector
        wanted = selector.matchLabels if selector is not None else {}
        on = labels.get(e.host) or {}
        if e.host == changed or (wanted and any(on.get(k) != v for k, v in wanted.items())):
            out.append(e.key)
    return out
