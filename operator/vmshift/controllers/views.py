"""Turns the operator's indexes (compact copies of the custom resources) into the scheduler's views.

Pure: no I/O. Kopf index functions call the ``index_*`` builders to keep only what decisions need
(so 10,000 VMs stay cheap); :func:`build_fleet` turns those entries plus what the agents report
into a :class:`~vmshift.scheduling.fleet.Fleet`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any

from vmshift import timestamps
from vmshift.api.labels import MANAGED_BY, MANAGED_BY_LABEL
from vmshift.api.migrationpolicy import MigrationPolicySpec
from vmshift.api.reasons import MigrationPhase
from vmshift.processor import processor_info
from vmshift.scheduling.fleet import Disk, Fleet, HostView, VMView
from vmshift.scheduling.policy import MigrationPolicyView, Rung

#: Migration phases that hold a VM, a slot on source and target, and the target's capacity.
IN_FLIGHT = frozenset({MigrationPhase.Validating, MigrationPhase.Transferring, MigrationPhase.SwitchingOver})


@dataclass(frozen=True)
class HostEntry:
    name: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    quarantined: bool
    uid: str


@dataclass(frozen=True)
class VMEntry:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    host: str | None
    phase: str | None
    processor: Mapping[str, Any] | None
    generation: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def view(self) -> VMView:
        """The scheduler's view of this VM where status puts it (built once per entry)."""
        return vm_view(self)


@dataclass(frozen=True)
class MigrationEntry:
    namespace: str
    name: str
    uid: str
    vm: str
    phase: MigrationPhase
    source: str | None
    target: str | None
    created: str
    owned_by_vm: bool = False
    made_by_operator: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def vm_key(self) -> str:
        return f"{self.namespace}/{self.vm}"

    @property
    def in_flight(self) -> bool:
        return self.phase in IN_FLIGHT


def index_host(body: Mapping[str, Any]) -> HostEntry:
    meta = body.get("metadata", {})
    remediation = (body.get("status") or {}).get("remediation") or {}
    return HostEntry(
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        spec=dict(body.get("spec") or {}),
        quarantined=bool(remediation.get("action")),
        uid=meta.get("uid", ""),
    )


def index_vm(body: Mapping[str, Any]) -> VMEntry:
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    return VMEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        labels=dict(meta.get("labels") or {}),
        spec=dict(body.get("spec") or {}),
        host=status.get("host"),
        phase=status.get("phase"),
        processor=status.get("processor"),
        generation=int(meta.get("generation") or 0),
    )


def index_migration(body: Mapping[str, Any]) -> MigrationEntry:
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    owners = meta.get("ownerReferences") or []
    return MigrationEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        vm=(body.get("spec") or {}).get("vmName", ""),
        phase=MigrationPhase(status.get("phase") or MigrationPhase.Pending),
        source=status.get("sourceHost"),
        target=status.get("targetHost") or (body.get("spec") or {}).get("targetHost"),
        created=meta.get("creationTimestamp") or "",
        owned_by_vm=any(o.get("kind") == "VirtualMachine" for o in owners),
        made_by_operator=(meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY,
    )


def operator_labels(**labels: str) -> dict[str, str]:
    """The labels of an object the operator creates: ``labels`` plus the managed-by mark (pure)."""
    return {**labels, MANAGED_BY_LABEL: MANAGED_BY}


def migrations_to_collect(mine: Iterable[MigrationEntry], keep: int, current: str) -> list[MigrationEntry]:
    """The finished migrations of one VM that garbage collection deletes (pure).

    Only the operator's own (``made_by_operator``): one applied by a person or from Git stays until
    they delete it, so the operator never fights a GitOps tool over an object it did not create. Of
    the operator's finished ones, the newest ``keep`` stay, counting ``current`` (the one that just
    finished, never collected here); unfinished ones are never touched.
    """
    finished = sorted((m for m in mine if m.made_by_operator and m.phase.finished and m.name != current),
                      key=lambda m: (m.created, m.name), reverse=True)
    return finished[max(keep - 1, 0):]


def policy_view(name: str, spec: Mapping[str, Any]) -> MigrationPolicyView:
    """A MigrationPolicy's spec as the scheduler's MigrationPolicyView; the API model fills in its defaults,
    so they are written once (the API server has already validated the spec)."""
    model = MigrationPolicySpec.model_validate(dict(spec))
    selector = model.selector
    return MigrationPolicyView(
        name=name,
        precedence=model.precedence,
        namespaces=tuple(selector.namespaces or ()),
        namespace_selector=dict(selector.namespaceSelector.matchLabels) if selector.namespaceSelector else {},
        vm_selector=dict(selector.vmSelector.matchLabels) if selector.vmSelector else {},
        threshold_ms=float(model.switchoverThresholdMs),
        max_downtime_ms=float(model.maxDowntimeMs),
        max_rounds=model.maxRounds,
        stall_rounds=model.stallRounds,
        ladder=tuple(Rung(r.value) for r in model.ladder),
        throttle=(model.autoConverge.initialPercent, model.autoConverge.stepPercent, model.autoConverge.maxPercent),
        bandwidth_mbps=model.bandwidthMbps,
        parallel_migrations_per_cluster=model.parallelMigrationsPerCluster,
        progress_timeout_seconds=float(model.progressTimeoutSeconds),
        completion_timeout_per_gib_seconds=float(model.completionTimeoutPerGiBSeconds),
    )


@dataclass(frozen=True)
class AgentFacts:
    """What the operator last learned from a host's agent (None fields: never reached)."""

    reachable: bool = False
    healthy: bool = True
    cpu_model: str | None = None
    vendor: str | None = None
    features: frozenset[str] = frozenset()


def vm_view(entry: VMEntry, *, migration_target: str | None = None, host: str | None = None) -> VMView:
    spec = entry.spec
    processor = entry.processor or {}
    features = processor.get("features")
    placement = spec.get("placement") or {}
    workload = spec.get("workload") or {}
    selector = (placement.get("hostSelector") or {}).get("matchLabels") or {}
    disks = tuple(
        Disk(
            name=d.get("name", ""),
            size_gib=float(d.get("sizeGiB", 0)),
            volume=d.get("volume"),
            passthrough_lun=d.get("passthroughLun"),
            local=bool(d.get("local")),
        )
        for d in spec.get("disks") or ()
    )
    memory = int(spec.get("memoryMiB", 0))
    return VMView(
        namespace=entry.namespace,
        name=entry.name,
        cpus=int(spec.get("cpus", 1)),
        memory_mib=memory,
        compatibility=bool((spec.get("processor") or {}).get("compatibility", False)),
        guest_features=frozenset(features) if features is not None and entry.host else None,
        guest_vendor=processor.get("vendor") if entry.host else None,
        guest_cpu_model=processor.get("model") if entry.host else None,
        disks=disks,
        priority=int(spec.get("priority", 0)),
        dirty_rate_mibps=float(workload.get("dirtyRateMiBps", 0)),
        working_set_mib=float(workload.get("workingSetMiB") or memory),
        host_selector=dict(selector),
        anti_affinity_group=placement.get("antiAffinityGroup"),
        host=host if host is not None else entry.host,
        desired_host=placement.get("host"),
        migration_target=migration_target,
        labels=entry.labels,
    )


@dataclass
class Overlay:
    """Capacity the operator has promised but the indexes do not show yet (placements just made)."""

    placed: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # vm key -> (host, cpus, memory)
    version: int = 0  # bumped by every change, so a fleet built before it is known to be stale

    def place(self, vm_key: str, host: str, cpus: int, memory_mib: int) -> None:
        self.placed[vm_key] = (host, cpus, memory_mib)
        self.version += 1

    def forget(self, vm_key: str) -> None:
        if self.placed.pop(vm_key, None) is not None:
            self.version += 1


def build_fleet(
    hosts: Iterable[HostEntry],
    vms: Iterable[VMEntry],
    migrations: Iterable[MigrationEntry],
    agents: Mapping[str, AgentFacts],
    overlay: Overlay | None = None,
) -> Fleet:
    """The scheduler's fleet: allocation from the VMs placed on each host (plus placements in
    progress), reservations and slots from migrations in flight, health from the agents."""
    in_flight = [m for m in migrations if m.in_flight]
    targets = {m.vm_key: m.target for m in in_flight}
    vm_list = list(vms)
    placed = dict(overlay.placed) if overlay else {}
    allocated: dict[str, list[int]] = {}
    views = []
    for entry in vm_list:
        host = entry.host or (placed[entry.key][0] if entry.key in placed else None)
        target = targets.get(entry.key)
        view = entry.view if host == entry.host and target is None else replace(
            entry.view, host=host, migration_target=target)
        views.append(view)
        if host is not None:
            used = allocated.setdefault(host, [0, 0])
            used[0] += view.cpus
            used[1] += view.memory_mib
    by_key = {v.key: v for v in views}
    reserved: dict[str, list[int]] = {}
    inbound: dict[str, int] = {}
    outbound: dict[str, int] = {}
    for m in in_flight:
        vm = by_key.get(m.vm_key)
        if m.target:
            inbound[m.target] = inbound.get(m.target, 0) + 1
            if vm is not None:
                r = reserved.setdefault(m.target, [0, 0])
                r[0] += vm.cpus
                r[1] += vm.memory_mib
        if m.source:
            outbound[m.source] = outbound.get(m.source, 0) + 1
    host_views = []
    for h in hosts:
        spec = h.spec
        facts = agents.get(h.name, AgentFacts())
        cpu = spec.get("cpu") or {}
        storage = spec.get("storage") or {}
        model = facts.cpu_model or cpu.get("model", "")
        try:
            known = processor_info(model)
            vendor, features = known.vendor, known.features
        except ValueError:
            vendor, features = facts.vendor or "", facts.features
        cordon = bool(spec.get("unschedulable")) or bool(spec.get("maintenance")) or h.quarantined
        reason = ("in maintenance" if spec.get("maintenance")
                  else "quarantined by remediation" if h.quarantined else "cordoned (spec.unschedulable)")
        used = allocated.get(h.name, [0, 0])
        res = reserved.get(h.name, [0, 0])
        host_views.append(HostView(
            name=h.name,
            cpu_model=model,
            vendor=vendor,
            features=features,
            cores=int(cpu.get("cores", 0)),
            memory_mib=int(spec.get("memoryMiB", 0)),
            allocated_cpus=used[0],
            allocated_memory_mib=used[1],
            reserved_cpus=res[0],
            reserved_memory_mib=res[1],
            shared_volumes=frozenset(storage.get("sharedVolumes") or ()),
            passthrough_luns=frozenset(storage.get("passthroughLuns") or ()),
            schedulable=not cordon,
            unschedulable_reason=reason,
            healthy=facts.healthy,
            reachable=facts.reachable,
            labels=h.labels,
            max_concurrent_migrations=int(spec.get("maxConcurrentMigrations", 2)),
            inbound_migrations=inbound.get(h.name, 0),
            outbound_migrations=outbound.get(h.name, 0),
            bandwidth_mbps=float(spec.get("migrationBandwidthMbps", 10_000)),
        ))
    return Fleet(host_views, views)


def in_flight_summary(entries: Iterable[MigrationEntry], now: datetime) -> tuple[int, float]:
    """How many migrations are under way and the age in seconds of the oldest (0 when none) (pure)."""
    count, oldest = 0, 0.0
    for entry in entries:
        if not entry.in_flight:
            continue
        count += 1
        try:
            created = timestamps.parse(entry.created)
        except ValueError:
            continue
        oldest = max(oldest, (now - created).total_seconds())
    return count, oldest
