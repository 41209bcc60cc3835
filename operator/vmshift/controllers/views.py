"""Turns the operator's indexes (compact copies of the custom resources) into the scheduler's views.

Pure: no I/O. Kopf index functions call the ``index_*`` builders to keep only what decisions need
(so 10,000 VMs stay cheap); :func:`build_fleet` turns those entries plus what the agents report
into a :class:`~vmshift.scheduling.fleet.Fleet`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from vmshift import timestamps
from vmshift.api.common import EVERYTHING, Selector
from vmshift.api.host import HostCpu, HostSpec
from vmshift.api.labels import MANAGED_BY, MANAGED_BY_LABEL
from vmshift.api.migrationpolicy import MigrationPolicySpec
from vmshift.api.reasons import MigrationPhase
from vmshift.api.virtualmachine import GuestProcessor, VirtualMachinePhase, VirtualMachineSpec
from vmshift.processor import processor_info
from vmshift.scheduling.fleet import Disk, Fleet, HostView, VMView
from vmshift.scheduling.policy import MigrationPolicyView, Rung

#: Migration phases that hold a VM, a slot on source and target, and the target's capacity.
IN_FLIGHT = frozenset({MigrationPhase.Validating, MigrationPhase.Transferring, MigrationPhase.SwitchingOver})


def problems(where: str, exc: ValidationError) -> str:
    """A model's refusal as one sentence naming each field and what is wrong with it (pure)."""
    return "; ".join(f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])


def _count(raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def parse_vm_spec(raw: Mapping[str, Any]) -> tuple[VirtualMachineSpec, str | None]:
    """A VM's spec as its model, parsed once where it enters the cache (pure).

    The defaults live in :class:`VirtualMachineSpec` only. A spec the model refuses (the CRD is
    generated from the model, so only an object stored before a rule changed) gives a stand-in that
    keeps its size for the capacity count, and the problem, which the VM controller reports.
    """
    try:
        return VirtualMachineSpec.model_validate(dict(raw)), None
    except ValidationError as exc:
        stand_in = VirtualMachineSpec.model_construct(cpus=_count(raw, "cpus"), memoryMiB=_count(raw, "memoryMiB"))
        return stand_in, problems("spec", exc)


#: Parsed VM specs by their JSON text, shared by every VM whose spec reads the same: a fleet has a
#: few shapes, so 10,000 VMs hold a few models (not 10,000 models and copies of their raw specs), and
#: a start parses each shape once (at a restart, parsing every VM's spec was a tenth of the CPU).
#: Callers never change the parsed model.
_vm_specs: dict[bytes, tuple[VirtualMachineSpec, str | None]] = {}
#: Distinct specs kept before the table starts again.
SPEC_TABLE_LIMIT = 4096


def vm_spec_of(raw: Mapping[str, Any]) -> tuple[VirtualMachineSpec, str | None]:
    """:func:`parse_vm_spec`, once per distinct spec."""
    text = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    hit = _vm_specs.get(text)
    if hit is None:
        hit = parse_vm_spec(raw)
        if len(_vm_specs) >= SPEC_TABLE_LIMIT:
            _vm_specs.clear()
        _vm_specs[text] = hit
    return hit


def parse_host_spec(raw: Mapping[str, Any]) -> tuple[HostSpec, str | None]:
    """A Host's spec as its model (pure); a refused one gives a stand-in the scheduler never uses."""
    try:
        return HostSpec.model_validate(dict(raw)), None
    except ValidationError as exc:
        stand_in = HostSpec.model_construct(cpu=HostCpu.model_construct(model="", cores=0), memoryMiB=0,
                                            unschedulable=True)
        return stand_in, problems("spec", exc)


@dataclass(frozen=True)
class HostEntry:
    name: str
    labels: Mapping[str, str]
    spec: HostSpec
    quarantined: bool
    uid: str
    #: The model refused the spec: what is wrong (the Host is then cordoned and says so).
    problem: str | None = None


@dataclass(frozen=True)
class VMEntry:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    spec: VirtualMachineSpec
    host: str | None
    phase: VirtualMachinePhase | None
    processor: GuestProcessor | None
    generation: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: The model refused the spec: what is wrong (the VM controller reports it and starts nothing).
    problem: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def view(self) -> VMView:
        """The scheduler's view of this VM where status puts it (built once per entry).

        Kept by hand, not with ``functools.cached_property``: on Python 3.11 that takes one lock
        shared by every entry, and a fleet built in a worker thread, taking it 10,000 times, starved
        the event loop waiting for it. Two threads building the same view at once is harmless."""
        made: VMView | None = self.__dict__.get("_view")
        if made is None:
            made = vm_view(self)
            self.__dict__["_view"] = made
        return made


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
    spec, problem = parse_host_spec(body.get("spec") or {})
    return HostEntry(
        name=meta["name"],
        labels=dict(meta.get("labels") or {}),
        spec=spec,
        quarantined=bool(remediation.get("action")),
        uid=meta.get("uid", ""),
        problem=problem,
    )


def _vm_phase(value: Any) -> VirtualMachinePhase | None:
    try:
        return VirtualMachinePhase(value) if value else None
    except ValueError:
        return None


#: Parsed ``status.processor`` values by their JSON text, shared by every VM that shows the same one.
_processors: dict[bytes, GuestProcessor | None] = {}
#: Distinct values kept before the table starts again (a fleet has a few per CPU model and selector).
PROCESSOR_TABLE_LIMIT = 4096


def _guest_processor(value: Any) -> GuestProcessor | None:
    """The VM's ``status.processor``, parsed once per distinct value: thousands of VMs on one CPU model
    show the same features and the same baseline (with its list of every host it spans), and one
    shared copy of it costs a few kilobytes where one per VM cost hundreds of megabytes at 10,000 VMs.
    Callers never change the parsed model."""
    if not value:
        return None
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    try:
        return _processors[text]
    except KeyError:
        pass
    try:
        parsed: GuestProcessor | None = GuestProcessor.model_validate(value)
    except ValidationError:
        parsed = None
    if len(_processors) >= PROCESSOR_TABLE_LIMIT:
        _processors.clear()
    _processors[text] = parsed
    return parsed


def index_vm(body: Mapping[str, Any]) -> VMEntry:
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    generation = int(meta.get("generation") or 0)
    spec, problem = vm_spec_of(body.get("spec") or {})
    return VMEntry(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        labels=dict(meta.get("labels") or {}),
        spec=spec,
        host=status.get("host"),
        phase=_vm_phase(status.get("phase")),
        processor=_guest_processor(status.get("processor")),
        generation=generation,
        annotations=dict(meta.get("annotations") or {}),
        problem=problem,
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


def uid_of(body: Mapping[str, Any]) -> str | None:
    """``metadata.uid`` of an object body, None when it has none (pure)."""
    uid = (body.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def operator_labels(**labels: str) -> dict[str, str]:
    """The labels of an object the operator creates: ``labels`` plus the managed-by mark (pure)."""
    return {**labels, MANAGED_BY_LABEL: MANAGED_BY}


def migrations_to_collect(mine: Iterable[MigrationEntry], keep: int, current: str,
                          silent: Collection[str] = ()) -> list[MigrationEntry]:
    """The finished migrations of one VM that garbage collection deletes (pure).

    Only the operator's own (``made_by_operator``): one applied by a person or from Git stays until
    they delete it, so the operator never fights a GitOps tool over an object it did not create. Of
    the operator's finished ones, the newest ``keep`` stay, counting ``current`` (the one that just
    finished, never collected here); unfinished ones are never touched. Nor is one that names a host
    in ``silent`` (whose agent does not answer now): it may be the only record that a copy of the
    guest was left there, and while that host is silent the record keeps the VM from being placed
    again should its guest be lost (``whereabouts.may_hold``).
    """
    finished = sorted((m for m in mine if m.made_by_operator and m.phase.finished and m.name != current),
                      key=lambda m: (m.created, m.name), reverse=True)
    return [m for m in finished[max(keep - 1, 0):] if m.source not in silent and m.target not in silent]


def policy_view(name: str, spec: Mapping[str, Any]) -> MigrationPolicyView:
    """A MigrationPolicy's spec as the scheduler's MigrationPolicyView; the API model fills in its defaults,
    so they are written once (the API server has already validated the spec)."""
    model = MigrationPolicySpec.model_validate(dict(spec))
    selector = model.selector
    return MigrationPolicyView(
        name=name,
        precedence=model.precedence,
        namespaces=tuple(selector.namespaces or ()),
        namespace_selector=Selector.of(selector.namespaceSelector),
        vm_selector=Selector.of(selector.vmSelector),
        threshold_ms=float(model.switchoverThresholdMs),
        max_downtime_ms=float(model.maxDowntimeMs),
        max_rounds=model.maxRounds,
        stall_rounds=model.stallRounds,
        ladder=tuple(Rung(r.value) for r in model.ladder),
        throttle=(model.autoConverge.initialPercent, model.autoConverge.stepPercent, model.autoConverge.maxPercent),
        bandwidth_mbps=model.bandwidthMbps,
        parallel_migrations_per_cluster=model.parallelMigrationsPerCluster,
        parallel_outbound_per_host=model.parallelOutboundMigrationsPerHost,
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
    #: What one outgoing migration stream carried, in Mbit/s (None: not measured yet).
    stream_mbps: float | None = None


def vm_view(entry: VMEntry, *, migration_target: str | None = None, host: str | None = None) -> VMView:
    spec = entry.spec
    processor = entry.processor if entry.host else None
    placement = spec.placement
    disks = tuple(
        Disk(name=d.name, size_gib=float(d.sizeGiB), volume=d.volume, passthrough_lun=d.passthroughLun,
             local=bool(d.local))
        for d in spec.disks
    )
    return VMView(
        namespace=entry.namespace,
        name=entry.name,
        cpus=spec.cpus,
        memory_mib=spec.memoryMiB,
        compatibility=spec.processor.compatibility,
        guest_features=frozenset(processor.features) if processor is not None else None,
        guest_vendor=processor.vendor if processor is not None else None,
        guest_cpu_model=processor.model if processor is not None else None,
        disks=disks,
        priority=spec.priority,
        dirty_rate_mibps=float(spec.workload.dirtyRateMiBps),
        working_set_mib=float(spec.workload.workingSetMiB or spec.memoryMiB),
        host_selector=placement.hostSelector.selector() if placement.hostSelector else EVERYTHING,
        anti_affinity_group=placement.antiAffinityGroup,
        host=host if host is not None else entry.host,
        desired_host=placement.host,
        migration_target=migration_target,
        labels=entry.labels,
    )


def build_fleet(
    hosts: Iterable[HostEntry],
    vms: Iterable[VMEntry],
    migrations: Iterable[MigrationEntry],
    agents: Mapping[str, AgentFacts],
    placed: Mapping[str, tuple[str, int, int]] | None = None,
) -> Fleet:
    """The scheduler's fleet: allocation from the VMs placed on each host (plus placements in
    progress), reservations and slots from migrations in flight, health from the agents."""
    in_flight = [m for m in migrations if m.in_flight]
    targets = in_flight_targets(in_flight)
    vm_list = list(vms)
    placed = placed or {}
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
    return Fleet([host_view(h, agents.get(h.name, AgentFacts()), allocated.get(h.name, (0, 0)),
                            reserved.get(h.name, (0, 0)), inbound.get(h.name, 0), outbound.get(h.name, 0))
                  for h in hosts], views)


def in_flight_targets(in_flight: Iterable[MigrationEntry]) -> dict[str, str | None]:
    """Each VM's migration target, by VM key, over migrations in flight (pure). One VM has one in
    flight, but should the caches show two for a moment, the newest (by creation, then name) counts."""
    return {m.vm_key: m.target for m in sorted(in_flight, key=lambda m: (m.created, m.name))}


def host_view(h: HostEntry, facts: AgentFacts, used: Sequence[int], reserved: Sequence[int], inbound: int,
              outbound: int) -> HostView:
    """The scheduler's view of one Host: its spec, what its agent reports, the cpus and memory VMs use
    there (``used``) and migrations in flight reserve (``reserved``), and those migrations' count."""
    spec = h.spec
    model = facts.cpu_model or spec.cpu.model
    try:
        known = processor_info(model)
        vendor, features = known.vendor, known.features
    except ValueError:
        vendor, features = facts.vendor or "", facts.features
    cordon = spec.unschedulable or spec.maintenance or h.quarantined or h.problem is not None
    reason = ("in maintenance" if spec.maintenance
              else "quarantined by remediation" if h.quarantined
              else f"its spec is refused ({h.problem})" if h.problem else "cordoned (spec.unschedulable)")
    return HostView(
        name=h.name,
        cpu_model=model,
        vendor=vendor,
        features=features,
        cores=spec.cpu.cores,
        memory_mib=spec.memoryMiB,
        allocated_cpus=used[0],
        allocated_memory_mib=used[1],
        reserved_cpus=reserved[0],
        reserved_memory_mib=reserved[1],
        shared_volumes=frozenset(spec.storage.sharedVolumes),
        passthrough_luns=frozenset(spec.storage.passthroughLuns),
        schedulable=not cordon,
        unschedulable_reason=reason,
        healthy=facts.healthy,
        reachable=facts.reachable,
        labels=h.labels,
        max_concurrent_migrations=spec.maxConcurrentMigrations,
        inbound_migrations=inbound,
        outbound_migrations=outbound,
        bandwidth_mbps=float(spec.migrationBandwidthMbps),
        stream_mbps=facts.stream_mbps,
    )


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
