"""The scheduler's view of hosts, VMs and disks as plain frozen data. Pure: no I/O.

No Kubernetes objects either: the operator fills these from its Kopf indexes (Host, VirtualMachine
and VirtualMachineMigration resources plus what the agents report); every decision in
``vmshift.scheduling`` reads only these. :class:`Fleet` adds the lookups the filters need (VMs on a
host, members of an anti-affinity group per host) and cheap copies with planned reservations, so a
planner can account for capacity it has already promised without mutating anything.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TypeVar

from vmshift.api.common import EVERYTHING, Selector
from vmshift.processor import guest_features, processor_info

_EMPTY: Mapping[str, str] = MappingProxyType({})
T = TypeVar("T")


@dataclass(frozen=True)
class Disk:
    """One disk of a VM: exactly one of ``volume``, ``passthrough_lun`` or ``local`` says where it is."""

    name: str
    size_gib: float = 0.0
    volume: str | None = None
    passthrough_lun: str | None = None
    local: bool = False

    @property
    def where(self) -> str:
        """A short phrase for messages: ``shared volume csv-1``, ``pass-through LUN lun-7``, ``local``."""
        if self.volume is not None:
            return f"shared volume {self.volume}"
        if self.passthrough_lun is not None:
            return f"pass-through LUN {self.passthrough_lun}"
        return "local storage"


@dataclass(frozen=True)
class HostView:
    """One hypervisor host as the scheduler sees it.

    ``allocated_*`` is what VMs running there use; ``reserved_*`` is what inbound migrations (and
    plans) have claimed but not yet used. ``schedulable`` is False when the host is cordoned, in
    maintenance or quarantined; ``unschedulable_reason`` then says which, for messages.
    ``inbound_migrations``/``outbound_migrations`` count migrations in flight, both of which
    use one of ``max_concurrent_migrations`` slots (as on Hyper-V). ``bandwidth_mbps`` is the
    migration link's rate; ``stream_mbps`` what one migration stream really carries on it (as the
    host's agent measured it).
    """

    name: str
    cpu_model: str
    vendor: str
    features: frozenset[str]
    cores: int
    memory_mib: int
    allocated_cpus: int = 0
    allocated_memory_mib: int = 0
    reserved_cpus: int = 0
    reserved_memory_mib: int = 0
    shared_volumes: frozenset[str] = frozenset()
    passthrough_luns: frozenset[str] = frozenset()
    schedulable: bool = True
    unschedulable_reason: str = "cordoned"
    healthy: bool = True
    reachable: bool = True
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    max_concurrent_migrations: int = 2
    inbound_migrations: int = 0
    outbound_migrations: int = 0
    bandwidth_mbps: float = 10_000.0
    #: What one migration stream out of this host really carries (Mbit/s, its agent's measure; None:
    #: unknown, taken to fill the link). Below ``bandwidth_mbps`` a drain runs several streams at once.
    stream_mbps: float | None = None

    @classmethod
    def of(cls, name: str, cpu_model: str, *, cores: int, memory_mib: int, **kwargs: object) -> HostView:
        """A host whose vendor and features come from archspec's data for ``cpu_model``."""
        info = processor_info(cpu_model)
        return cls(
            name=name,
            cpu_model=cpu_model,
            vendor=info.vendor,
            features=info.features,
            cores=cores,
            memory_mib=memory_mib,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def free_cpus(self) -> int:
        return self.cores - self.allocated_cpus - self.reserved_cpus

    @property
    def free_memory_mib(self) -> int:
        return self.memory_mib - self.allocated_memory_mib - self.reserved_memory_mib

    @property
    def migrations_in_flight(self) -> int:
        return self.inbound_migrations + self.outbound_migrations

    @property
    def free_migration_slots(self) -> int:
        return max(self.max_concurrent_migrations - self.migrations_in_flight, 0)

    def with_reservation(self, cpus: int, memory_mib: int, *, inbound: int = 0) -> HostView:
        """This host with ``cpus``/``memory_mib`` more reserved (negative releases)."""
        return replace(
            self,
            reserved_cpus=self.reserved_cpus + cpus,
            reserved_memory_mib=self.reserved_memory_mib + memory_mib,
            inbound_migrations=self.inbound_migrations + inbound,
        )


@dataclass(frozen=True)
class VMView:
    """One virtual machine as the scheduler sees it.

    ``guest_features``/``guest_vendor``/``guest_cpu_model`` are what the guest was started with
    (None until it first starts; then fixed for its lifetime). ``host`` is where it runs now,
    ``desired_host`` its ``spec.placement.host``; ``migration_target`` is the target of a
    migration in flight (None when none is).
    """

    namespace: str
    name: str
    cpus: int
    memory_mib: int
    compatibility: bool = False
    guest_features: frozenset[str] | None = None
    guest_vendor: str | None = None
    guest_cpu_model: str | None = None
    disks: tuple[Disk, ...] = ()
    priority: int = 0
    dirty_rate_mibps: float = 0.0
    working_set_mib: float = 0.0
    host_selector: Selector = EVERYTHING
    anti_affinity_group: str | None = None
    host: str | None = None
    desired_host: str | None = None
    migration_target: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    @property
    def key(self) -> str:
        """``namespace/name``: how the fleet indexes VMs."""
        return f"{self.namespace}/{self.name}"

    @property
    def started(self) -> bool:
        return self.guest_features is not None

    @property
    def migrating(self) -> bool:
        return self.migration_target is not None

    @property
    def local_disks(self) -> tuple[Disk, ...]:
        return tuple(d for d in self.disks if d.local)

    @property
    def local_disk_mib(self) -> float:
        return sum(d.size_gib for d in self.local_disks) * 1024

    def started_on(self, host: HostView) -> VMView:
        """This VM as it would be after starting on ``host`` (its processor fixed by that host)."""
        return replace(
            self,
            host=host.name,
            guest_features=features_on(self, host),
            guest_vendor=host.vendor,
            guest_cpu_model=host.cpu_model,
        )


def features_on(vm: VMView, host: HostView) -> frozenset[str]:
    """The features ``vm``'s guest has, or would get if it started on ``host``."""
    if vm.guest_features is not None:
        return vm.guest_features
    try:
        return guest_features(host.cpu_model, vm.compatibility)
    except ValueError:  # a host reporting a model archspec lacks: trust its reported features
        return host.features


class Fleet:
    """Hosts by name and VMs by ``namespace/name``, with the lookups filters need.

    Treat it as immutable: :meth:`with_planned` returns a new fleet that shares everything but the
    one host and the one group it changes, so a planner can try thousands of variants cheaply.
    """

    __slots__ = ("_group_hosts", "_hosts", "_memo", "_on_host", "_planned", "_vms")

    def __init__(self, hosts: Iterable[HostView], vms: Iterable[VMView] = ()) -> None:
        self._hosts: dict[str, HostView] = {h.name: h for h in hosts}
        self._vms: dict[str, VMView] = {v.key: v for v in vms}
        self._on_host: dict[str, tuple[str, ...]] = {}
        self._group_hosts: dict[str, dict[str, frozenset[str]]] = {}
        self._planned: dict[str, str] = {}
        #: Answers that depend on the hosts only (see :meth:`per_hosts`), shared by copies with the same hosts.
        self._memo: dict[Hashable, object] = {}
        on_host: dict[str, list[str]] = {}
        groups: dict[str, dict[str, set[str]]] = {}
        for vm in self._vms.values():
            if vm.host is not None:
                on_host.setdefault(vm.host, []).append(vm.key)
            if vm.anti_affinity_group is not None:
                members = groups.setdefault(vm.anti_affinity_group, {})
                for where in (vm.host, vm.migration_target):
                    if where is not None:
                        members.setdefault(where, set()).add(vm.key)
        self._on_host = {h: tuple(sorted(keys)) for h, keys in on_host.items()}
        self._group_hosts = {
            g: {h: frozenset(keys) for h, keys in by_host.items()} for g, by_host in groups.items()
        }

    @classmethod
    def assembled(cls, hosts: dict[str, HostView], vms: dict[str, VMView], on_host: dict[str, tuple[str, ...]],
                  group_hosts: dict[str, dict[str, frozenset[str]]], *, memo_of: Fleet | None = None) -> Fleet:
        """A fleet from lookups already derived (by a caller that keeps them current change by change):
        ``on_host`` the sorted keys of the VMs on each host, ``group_hosts`` each anti-affinity
        group's members by host (where they run or move to). The maps become the fleet's: the caller
        hands over copies and never changes them after. ``memo_of``: a fleet with the same hosts,
        whose answers that depend on the hosts alone (:meth:`per_hosts`) this one shares."""
        other = cls.__new__(cls)
        other._hosts = hosts
        other._vms = vms
        other._on_host = on_host
        other._group_hosts = group_hosts
        other._planned = {}
        other._memo = memo_of._memo if memo_of is not None else {}
        return other

    # --- lookups -------------------------------------------------------------------------------

    @property
    def hosts(self) -> Mapping[str, HostView]:
        return MappingProxyType(self._hosts)

    @property
    def vms(self) -> Mapping[str, VMView]:
        return MappingProxyType(self._vms)

    @property
    def planned(self) -> Mapping[str, str]:
        """VM key -> host for moves a planner has reserved in this copy."""
        return MappingProxyType(self._planned)

    def host(self, name: str) -> HostView | None:
        return self._hosts.get(name)

    def vm(self, key: str) -> VMView | None:
        return self._vms.get(key)

    def host_names(self) -> list[str]:
        """Every host name, sorted (the order every decision iterates in, for determinism)."""
        return sorted(self._hosts)

    def vms_on(self, host: str) -> list[VMView]:
        """VMs whose current host is ``host``, sorted by key."""
        return [self._vms[k] for k in self._on_host.get(host, ())]

    def group_members_on(self, group: str, host: str) -> frozenset[str]:
        """Keys of VMs of anti-affinity ``group`` that run on, move to, or are planned for ``host``."""
        return self._group_hosts.get(group, {}).get(host, frozenset())

    def __iter__(self) -> Iterator[HostView]:
        return iter(self._hosts[name] for name in self.host_names())

    def __len__(self) -> int:
        return len(self._hosts)

    # --- planning copies -----------------------------------------------------------------------

    def _copy(self) -> Fleet:
        other = Fleet.__new__(Fleet)
        other._hosts = self._hosts
        other._vms = self._vms
        other._on_host = self._on_host
        other._group_hosts = self._group_hosts
        other._planned = self._planned
        other._memo = self._memo
        return other

    def per_hosts(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, remembered under ``key`` for as long as the hosts are these (it must depend
        on the hosts alone: a baseline over their features and labels, say)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]  # type: ignore[return-value]

    def with_host(self, host: HostView) -> Fleet:
        """A copy with ``host`` replaced (or added)."""
        other = self._copy()
        other._hosts = {**self._hosts, host.name: host}
        other._memo = {}
        return other

    def with_planned(self, vm: VMView, target: str, *, inbound: int = 1) -> Fleet:
        """A copy where ``vm``'s move to ``target`` is promised: its cpus and memory are reserved
        there, and it counts as a member of its anti-affinity group on ``target``."""
        other = self.with_host(self._hosts[target].with_reservation(vm.cpus, vm.memory_mib, inbound=inbound))
        other._planned = {**self._planned, vm.key: target}
        if vm.anti_affinity_group is not None:
            by_host = dict(self._group_hosts.get(vm.anti_affinity_group, {}))
            by_host[target] = by_host.get(target, frozenset()) | {vm.key}
            other._group_hosts = {**self._group_hosts, vm.anti_affinity_group: by_host}
        return other
