"""Admission of migrations: which may start now, fairly, without overbooking. Pure: no I/O.

Each pass takes the migrations in flight and the pending ones and answers which may start: every
host has ``max_concurrent_migrations`` slots, and a migration holds one on its source and one on its
target (as on Hyper-V); the cluster has a limit too (KubeVirt's ``parallelMigrationsPerCluster``). A
VM moves once at a time. Each request also carries its MigrationPolicy's limits: at most
``policy_cluster_limit`` migrations of that policy's VMs at once in the cluster, and at most
``outbound_limit`` of them leaving one source host at once (KubeVirt's
``parallelOutboundMigrationsPerHost``).

Evacuations (the migrations a drain or a remediation creates to empty a host) go first: they are
served oldest first before any user request, and the hosts and cluster slots a waiting evacuation
needs are not given to a user request meanwhile, so a failing host is emptied as fast as the limits
allow however many user migrations are queued. User requests are served first come, first served
within a namespace, round-robin across namespaces (the namespace whose oldest request is oldest goes
first), so one namespace's thousand requests cannot starve another's one; a request that must wait
does not block later ones that can go (backfilling).

Capacity bookkeeping: :class:`Reservations` records the cpus and memory each admitted migration
claims on its target until it ends, so two requests that each fit alone but not together are never
both admitted. ``HostView.reserved_*`` is expected to hold the claims of migrations already in
flight; the reservations of one pass come on top.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypedDict, TypeVar

from vmshift.scheduling.fleet import HostView
from vmshift.scheduling.policy import DEFAULT_POLICY, MigrationPolicyView


@dataclass(frozen=True)
class QueuedMigration:
    """One VirtualMachineMigration as the queue sees it (``key`` is its ``namespace/name``)."""

    key: str
    namespace: str
    vm: str
    source: str
    target: str | None
    created: float
    cpus: int = 0
    memory_mib: int = 0
    #: A drain's or remediation's move: served before every user request.
    evacuation: bool = False
    #: The MigrationPolicy governing the VM ("" for the defaults) and its limits (None: no limit).
    policy: str = ""
    outbound_limit: int | None = None
    policy_cluster_limit: int | None = None

    @property
    def order(self) -> tuple[float, str]:
        return (self.created, self.key)


K = TypeVar("K")


def _bump(counts: Mapping[K, int], key: K, by: int) -> Mapping[K, int]:
    out = dict(counts)
    out[key] = max(out.get(key, 0) + by, 0)
    return MappingProxyType(out)


class QueueTerms(TypedDict):
    evacuation: bool
    policy: str
    outbound_limit: int | None
    policy_cluster_limit: int | None


def queue_terms(policy: MigrationPolicyView, *, evacuation: bool) -> QueueTerms:
    """What a request carries into the queue from its policy: its limits, when a MigrationPolicy
    governs the VM (the defaults add no per-policy limit: the hosts' slots and the cluster limit
    hold them), and whether it is an evacuation."""
    if policy is DEFAULT_POLICY or policy.name == DEFAULT_POLICY.name:
        return QueueTerms(evacuation=evacuation, policy="", outbound_limit=None, policy_cluster_limit=None)
    return QueueTerms(evacuation=evacuation, policy=policy.name, outbound_limit=policy.parallel_outbound_per_host,
                      policy_cluster_limit=policy.parallel_migrations_per_cluster)


@dataclass(frozen=True)
class Reservations:
    """Capacity promised to admitted migrations: host -> (cpus, memory MiB), plus slots in use."""

    cpus: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    memory_mib: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    slots: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    total: int = 0
    #: (policy, source host) -> migrations of that policy's VMs leaving the host (only VMs a
    #: MigrationPolicy governs are counted: the defaults set no per-policy limit).
    outbound: Mapping[tuple[str, str], int] = field(default_factory=lambda: MappingProxyType({}))
    #: policy -> migrations of that policy's VMs in the cluster.
    per_policy: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, in_flight: Iterable[QueuedMigration]) -> Reservations:
        """The slots migrations in flight hold (their capacity is already in ``HostView.reserved_*``)."""
        out = cls()
        for request in in_flight:
            out = out.add(request, capacity=False)
        return out

    def add(self, request: QueuedMigration, *, capacity: bool = True) -> Reservations:
        """These reservations plus ``request``'s: a slot on source and target, and (``capacity``)
        its cpus and memory on the target."""
        slots = dict(self.slots)
        for host in {request.source, request.target} - {None}:
            assert host is not None
            slots[host] = slots.get(host, 0) + 1
        cpus = dict(self.cpus)
        memory = dict(self.memory_mib)
        if capacity and request.target is not None:
            cpus[request.target] = cpus.get(request.target, 0) + request.cpus
            memory[request.target] = memory.get(request.target, 0) + request.memory_mib
        return Reservations(
            cpus=MappingProxyType(cpus),
            memory_mib=MappingProxyType(memory),
            slots=MappingProxyType(slots),
            total=self.total + 1,
            outbound=_bump(self.outbound, (request.policy, request.source), 1) if request.policy else self.outbound,
            per_policy=_bump(self.per_policy, request.policy, 1) if request.policy else self.per_policy,
        )

    def release(self, request: QueuedMigration, *, capacity: bool = True) -> Reservations:
        """These reservations without ``request``'s (when it ends, whatever the outcome)."""
        slots = dict(self.slots)
        for host in {request.source, request.target} - {None}:
            assert host is not None
            slots[host] = max(slots.get(host, 0) - 1, 0)
        cpus = dict(self.cpus)
        memory = dict(self.memory_mib)
        if capacity and request.target is not None:
            cpus[request.target] = max(cpus.get(request.target, 0) - request.cpus, 0)
            memory[request.target] = max(memory.get(request.target, 0) - request.memory_mib, 0)
        return Reservations(
            cpus=MappingProxyType(cpus),
            memory_mib=MappingProxyType(memory),
            slots=MappingProxyType(slots),
            total=max(self.total - 1, 0),
            outbound=_bump(self.outbound, (request.policy, request.source), -1) if request.policy else self.outbound,
            per_policy=_bump(self.per_policy, request.policy, -1) if request.policy else self.per_policy,
        )

    def free_slots(self, host: HostView) -> int:
        return host.max_concurrent_migrations - self.slots.get(host.name, 0)

    def free_memory_mib(self, host: HostView) -> int:
        return host.free_memory_mib - self.memory_mib.get(host.name, 0)

    def free_cpus(self, host: HostView) -> int:
        return host.free_cpus - self.cpus.get(host.name, 0)


@dataclass(frozen=True)
class Admission:
    """The answer of one pass: requests that start now (in order), and why each other one waits."""

    admitted: tuple[QueuedMigration, ...]
    waiting: Mapping[str, str]
    reservations: Reservations


def _why_not(
    request: QueuedMigration,
    hosts: Mapping[str, HostView],
    booked: Reservations,
    busy_vms: set[str],
    cluster_limit: int | None,
) -> str | None:
    """Why ``request`` cannot start in this pass, or None when it can."""
    if request.vm in busy_vms:
        return f"{request.vm} already has a migration in flight; this one waits for it to end."
    if cluster_limit is not None and booked.total >= cluster_limit:
        return f"the cluster already runs {booked.total} of its {cluster_limit} concurrent migrations."
    governed = booked.per_policy.get(request.policy, 0)
    if request.policy_cluster_limit is not None and governed >= request.policy_cluster_limit:
        return (f"{governed} migrations of VMs under policy {request.policy or '(default)'} already run, its "
                f"parallelMigrationsPerCluster of {request.policy_cluster_limit}.")
    leaving = booked.outbound.get((request.policy, request.source), 0)
    if request.outbound_limit is not None and leaving >= request.outbound_limit:
        return (f"{leaving} migrations of VMs under policy {request.policy or '(default)'} already leave "
                f"{request.source}, its parallelOutboundMigrationsPerHost of {request.outbound_limit}.")
    if request.target is None:
        return "no target host has been chosen yet."
    for role, name in (("source", request.source), ("target", request.target)):
        host = hosts.get(name)
        if host is None:
            return f"the {role} host {name} is unknown."
        if booked.free_slots(host) <= 0:
            return (
                f"the {role} {name} already runs {booked.slots.get(name, 0)} of its "
                f"{host.max_concurrent_migrations} concurrent migrations."
            )
    target = hosts[request.target]
    if request.memory_mib > booked.free_memory_mib(target) or request.cpus > booked.free_cpus(target):
        return (
            f"{request.target} has {booked.free_memory_mib(target)} MiB and {booked.free_cpus(target)} cpus "
            f"left after earlier migrations' reservations; {request.vm} needs {request.memory_mib} MiB and "
            f"{request.cpus} cpus."
        )
    return None


def admit(
    pending: Sequence[QueuedMigration],
    in_flight: Sequence[QueuedMigration],
    hosts: Mapping[str, HostView],
    *,
    cluster_limit: int | None = None,
) -> Admission:
    """Which ``pending`` migrations may start now; never more than any host's slots (counted on source
    and target) or ``cluster_limit`` in flight, never more memory or cpus than a target has free,
    never two migrations of one VM.

    Within a pass capacity only shrinks, so a request that cannot start when its turn comes is set
    aside for the whole pass: the pass is linear in the number of requests.
    """
    booked = Reservations.of(in_flight)
    busy_vms = {r.vm for r in in_flight}
    admitted: list[QueuedMigration] = []
    waiting: dict[str, str] = {}
    # Evacuations first, oldest first; what a waiting one needs is kept from user requests.
    held_hosts: dict[str, str] = {}
    cluster_held: str | None = None
    for request in sorted((r for r in pending if r.evacuation), key=lambda r: r.order):
        why = _why_not(request, hosts, booked, busy_vms, cluster_limit)
        if why is None:
            admitted.append(request)
            booked = booked.add(request)
            busy_vms.add(request.vm)
            continue
        waiting[request.key] = why
        if request.vm in busy_vms or request.target is None:
            continue  # waits for its own VM or a target: it holds nothing back
        if cluster_limit is not None and booked.total >= cluster_limit:
            cluster_held = request.key
        for host in (request.source, request.target):
            held_hosts.setdefault(host, request.key)
    queues: dict[str, deque[QueuedMigration]] = {}
    for request in sorted((r for r in pending if not r.evacuation), key=lambda r: r.order):
        queues.setdefault(request.namespace, deque()).append(request)
    turn = deque(sorted(queues, key=lambda ns: (queues[ns][0].order, ns)))

    def user_why_not(request: QueuedMigration) -> str | None:
        if cluster_held is not None:
            return f"the evacuation {cluster_held} waits for a cluster slot and goes first."
        for host in (request.source, request.target):
            if host is not None and host in held_hosts:
                return f"the evacuation {held_hosts[host]} waits for {host} and goes first."
        return _why_not(request, hosts, booked, busy_vms, cluster_limit)

    while turn:
        if cluster_limit is not None and booked.total >= cluster_limit:
            break
        namespace = turn.popleft()
        queue = queues[namespace]
        while queue:
            request = queue.popleft()
            why = user_why_not(request)
            if why is None:
                admitted.append(request)
                booked = booked.add(request)
                busy_vms.add(request.vm)
                break
            waiting[request.key] = why
        if queue:
            turn.append(namespace)
    for queue in queues.values():
        for request in queue:
            waiting[request.key] = user_why_not(request) or "waits its turn."
    return Admission(admitted=tuple(admitted), waiting=MappingProxyType(waiting), reservations=booked)
